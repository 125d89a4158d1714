// Handler desk: state, screen-pop, live transcript, call controls, wrap-up, call-backs.
// Everything is drawn from the last `desk.view` the server pushed, plus live events
// (transcript segments, incident numbers) that arrive between views.
"use strict";

const $ = (id) => document.getElementById(id);
const { el, api, act, fmtDur, fmtClock, fmtDateTime } = CR;
const THRIVE = ["threat", "harm", "risk", "investigation", "vulnerability", "engagement"];

let view = null;          // last desk.view
let card = null;          // the call card shown (offer, call or wrap-up)
let phase = "idle";       // ringing | connected | wrapup | idle
let lines = ["999", "101"];
let liveFinal = {};       // call_id -> final segments received since the last view
let partial = {};         // call_id -> {channel: segment} (replaced by the next)
let callbacks = [];
let formCallId = null;    // the call the grading form belongs to
let notices = {};         // call_id -> why live captions stopped

function captionsOff(c) {
  return (c.flags || []).includes("live_transcript_off") || c.call_id in notices;
}

function cardOf(v) {
  if (v.call) return [v.call, "connected"];
  if (v.offer) return [v.offer, "ringing"];
  if (v.wrapup) return [v.wrapup, "wrapup"];
  return [null, "idle"];
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
function fmtShort(epoch) {
  const d = new Date(epoch * 1000);
  return `${d.getDate()} ${MONTHS[d.getMonth()]} ${fmtClock(epoch).slice(0, 5)}`;
}

function render() {
  if (!view) return;
  const st = $("state");
  st.textContent = CR.stateLabel(view.state);
  st.className = "pill st-" + view.state;
  $("state-reason").textContent = view.reason && view.state === "not_ready" ? view.reason : "";
  const t = view.today || {};
  $("t-calls").textContent = t.calls ?? 0;
  $("t-avg").textContent = fmtDur(t.avg_talk);
  $("t-talk").textContent = fmtDur(t.talk);
  $("t-rej").textContent = t.rejected ?? 0;
  $("btn-available").disabled = ["available", "ringing", "on_call"].includes(view.state);
  [card, phase] = cardOf(view);
  renderCard();
  renderForm();
}

function renderCard() {
  const pop = $("pop");
  if (!card) {
    pop.classList.add("hidden");
    $("idle").classList.remove("hidden");
    $("idle-big").textContent = view.state === "available" ? "Ready — waiting for a call" : "Not taking calls";
    return;
  }
  $("idle").classList.add("hidden");
  pop.classList.remove("hidden");
  pop.dataset.callId = card.call_id;
  const is999 = card.line === "999";
  pop.className = `pop line-${is999 ? "999" : "101"} ${phase}`;
  $("pop-line").textContent = card.line;
  $("pop-kind").textContent = is999 ? "Emergency" : "Non-emergency";
  $("pop-phase").textContent = phase === "connected" ? (card.held ? "On hold" : "Connected")
    : phase === "wrapup" ? "Wrap-up" : "Ringing";
  $("pop-caller").textContent = card.caller || "Withheld";
  const e164 = card.caller_normalised && card.caller_normalised !== card.caller ? card.caller_normalised : "";
  $("pop-ident").textContent = [e164, card.display_name, card.line_type].filter(Boolean).join(" · ");
  const flags = $("pop-flags");
  flags.replaceChildren();
  for (const f of card.flags || []) {
    if (f === "live_transcript_off") continue;   // shown in the transcript pane
    const label = f === "dtmf55" ? "55 — Silent Solution" : f === "silent" ? "Silent call" : f;
    flags.append(el("span", { class: "flag " + (["silent", "dtmf55"].includes(f) ? f : "other"), text: label }));
  }
  if (callbacks.some((c) => c.caller === card.caller && c.state !== "done")) {
    flags.append(el("span", { class: "flag callback", text: "On call-back list" }));
  }
  $("pop-arrived").textContent = fmtClock(card.arrived_at);
  const ld = card.location_detail;
  const how = ld && ld.parsed ? [...(ld.geodetic || []), ...(ld.civic || [])].map((x) => x.method).find(Boolean) : "";
  $("pop-location").textContent = !card.location ? "not provided"
    : ld && ld.parsed ? card.location + (how ? ` · ${how}` : "")   // the summary has the ± radius
    : card.location + (card.location_accuracy ? ` (±${Math.round(card.location_accuracy)} m)` : "")
      + (ld && ld.error ? ` (unread: ${ld.error})` : "");
  const inc = $("pop-incident");
  inc.textContent = card.incident_number ? card.incident_number + (card.grade ? `  · grade ${card.grade}` : "") : "awaiting CAD";
  inc.className = card.incident_number ? "incident" : "muted";
  const qh = $("pop-qhist");
  qh.replaceChildren(...(card.queue_history || []).map((q) =>
    el("span", { text: `${fmtClock(q.at)} ${q.event}${q.position ? " #" + q.position : ""}` })));
  const prev = $("pop-prev");
  prev.replaceChildren();
  const pcs = card.previous_calls || [];
  if (!pcs.length) prev.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No previous calls" })));
  for (const p of pcs) {
    prev.append(el("tr", {},
      el("td", { text: fmtShort(p.arrived_at), title: fmtDateTime(p.arrived_at) }), el("td", { text: p.line }),
      el("td", { text: p.outcome || "" }),
      el("td", {}, !p.incident_number ? "–" : CR.me.roles.includes("auditor")
        ? el("a", { href: "/auditor#call=" + encodeURIComponent(p.call_id), text: p.incident_number })
        : el("span", { class: "mono", text: p.incident_number, title: "call " + p.call_id })),
      el("td", { text: p.grade || "–" })));
  }
  $("act-offer").classList.toggle("hidden", phase !== "ringing");
  $("act-call").classList.toggle("hidden", phase !== "connected");
  $("hold").textContent = card.held ? "Resume" : "Hold";
  const xs = $("xfer-to");
  if (xs.options.length !== lines.length + 1) {
    xs.replaceChildren(...lines.map((l) => el("option", { value: "line:" + l, text: `Line ${l} queue` })),
      el("option", { value: "handler", text: "Named handler…" }));
  }
  renderTranscript();
  tick();
}

const UNSURE = 0.5;   // a word the recogniser gives less than this is marked for the handler

// A caption's words; those the recogniser was unsure of are marked (dotted underline,
// confidence on hover) so the handler checks them with the caller.
function captionWords(s) {
  if (!s.words || !s.words.length) return [s.text];
  return s.words.flatMap((w, i) => {
    const unsure = typeof w.conf === "number" && w.conf < UNSURE;
    const span = el("span", { class: unsure ? "w uncertain" : "w", text: w.word,
      title: unsure ? `unsure: ${Math.round(w.conf * 100)} % confidence` : undefined });
    return i ? [" ", span] : [span];
  });
}

function renderTranscript() {
  const box = $("transcript");
  if (!card) return;
  // Live finals carry word confidences: prefer them to the view's copy of the same segment.
  const key = (s) => `${s.channel}|${s.start}|${s.text}`;
  const live = new Map((liveFinal[card.call_id] || []).map((s) => [key(s), s]));
  const segs = (card.transcript || []).map((s) => live.get(key(s)) || s);
  const seen = new Set(segs.map(key));
  for (const s of live.values()) if (!seen.has(key(s))) segs.push(s);
  segs.sort((a, b) => a.start - b.start);
  for (const s of Object.values(partial[card.call_id] || {})) segs.push({ ...s, partialSeg: true });
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.replaceChildren(...segs.map((s) => el("div", { class: `tl ${s.channel}${s.partialSeg ? " partial" : ""}` },
    el("span", { class: "who" }, s.channel === "caller" ? "Caller" : "Handler", el("span", { class: "ts", text: fmtDur(s.start) })),
    captionWords(s))));
  if (!segs.length && !captionsOff(card)) box.append(el("div", { class: "muted", text: phase === "ringing" ? "Transcript starts when the call is answered." : "Listening…" }));
  if (captionsOff(card)) {
    box.append(el("div", { class: "notice", text: "Live captions stopped" + (notices[card.call_id] ? ": " + notices[card.call_id] : "")
      + ". Record the caller's account yourself; the full transcript follows from the recording." }));
  }
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderForm() {
  const form = $("wrapup");
  const target = view.wrapup || view.call;
  if (!target) { form.classList.add("hidden"); return; }
  form.classList.remove("hidden");
  if (formCallId !== target.call_id) {   // new call: clear, but never wipe typing mid-call
    formCallId = target.call_id;
    for (const k of THRIVE) $("th-" + k).value = "";
    $("grade").value = target.grade || "";
    $("notes").value = "";
    $("wrapup-status").textContent = "";
  }
  $("wrapup-title").textContent = (view.wrapup ? "Wrap-up" : "Grading") + ` — THRIVE · call from ${target.caller}`;
  $("ready").classList.toggle("hidden", !view.wrapup);
}

function tick() {
  if (!card) return;
  const now = CR.serverNow();
  const waitEnd = card.answered_at || (phase === "ringing" ? now : card.answered_at || now);
  const wait = waitEnd - card.arrived_at;
  $("pop-wait").textContent = fmtDur(wait);
  $("pop-wait-k").textContent = phase === "ringing" ? "Waiting" : "Waited";
  $("wait-box").classList.toggle("wait-over", phase === "ringing" && card.line === "999" && wait > 10);
  const talking = phase === "connected" && card.answered_at;
  $("talk-box").classList.toggle("hidden", !talking);
  if (talking) $("pop-talk").textContent = fmtDur(now - card.answered_at);
}

function renderQueue(q) {
  lines = q.lines.map((l) => l.name);
  $("qsum").replaceChildren(...q.lines.map((l) => el("div", { class: "fig l" + l.name },
    el("div", { class: "v", text: String(l.waiting) }),
    el("div", { class: "k", text: `${l.name} · longest ${fmtDur(l.longest_wait)}` }))));
}

async function loadCallbacks() {
  try { callbacks = await api("GET", "/api/callbacks"); } catch (e) { return; }
  const box = $("callbacks");
  const open = callbacks.filter((c) => c.state !== "done");
  if (!open.length) { box.replaceChildren(el("div", { class: "muted", text: "None waiting" })); return; }
  box.replaceChildren(...open.map((c) => {
    const outcome = el("input", { placeholder: "outcome", size: 12 });
    return el("div", { class: "cb-item", dataset: { cbId: c.cb_id } },
      el("div", { class: "top" }, el("b", { class: "mono", text: c.caller }),
        el("span", { class: "muted", text: `${c.line} · ${fmtClock(c.abandoned_at)} · waited ${fmtDur(c.wait)}` })),
      c.state === "taken" ? el("div", { class: "muted small", text: "Taken by " + c.taken_by }) : null,
      el("div", { class: "btns" },
        c.state === "open" ? el("button", { class: "primary", text: "Take", onclick: () =>
          act(() => api("POST", `/api/callbacks/${c.cb_id}/take`), "Call-back taken").then(loadCallbacks) }) : null,
        outcome,
        el("button", { text: "Close", onclick: () => {
          if (!outcome.value.trim()) { CR.toast("Enter the outcome first", "error"); return; }
          act(() => api("POST", `/api/callbacks/${c.cb_id}/complete`, { outcome: outcome.value.trim() }), "Call-back closed").then(loadCallbacks);
        } })));
  }));
  if (card) renderCard();
}

function onLive(m) {
  switch (m.type) {
    case "desk.view":
      CR.syncClock(m.view.at);
      if (!view || cardOf(m.view)[0]?.call_id !== card?.call_id) { liveFinal = {}; partial = {}; }
      view = m.view;
      render();
      break;
    case "call.transcript_segment": {
      const p = (partial[m.call_id] ||= {});
      if (m.final) { (liveFinal[m.call_id] ||= []).push(m); delete p[m.channel]; }
      else p[m.channel] = m;
      if (card && card.call_id === m.call_id) renderTranscript();
      break;
    }
    case "call.incident":
      if (card && card.call_id === m.call_id) {
        card.incident_number = m.incident_number; card.grade = m.grade || card.grade; renderCard();
      }
      break;
    case "call.flagged":
      if (m.flag === "live_transcript_off") notices[m.call_id] = m.detail || "";
      else if (card && card.call_id === m.call_id && !(card.flags || []).includes(m.flag)) card.flags = [...(card.flags || []), m.flag];
      if (card && card.call_id === m.call_id) renderCard();
      break;
    case "call.hold":   // hold changed (from this desk or the phone)
      if (card && card.call_id === m.call_id) { card.held = !!m.on_hold; renderCard(); }
      break;
    case "call.abandoned":
      loadCallbacks();
      break;
    case "queue.summary":
      renderQueue(m);
      break;
    case "desk.error":
      CR.toast(m.error, "error");
      break;
  }
}

function wire() {
  $("btn-available").onclick = () => act(() => api("POST", "/api/desk/state", { state: "available" }));
  $("btn-notready").onclick = () => act(() => api("POST", "/api/desk/state", { state: "not_ready", reason: $("nr-reason").value }));
  $("btn-logout-q").onclick = () => act(() => api("POST", "/api/desk/state", { state: "logged_out", reason: "left queue" }));
  $("accept").onclick = () => act(() => api("POST", "/api/desk/offer/accept", { call_id: card.call_id }));
  $("reject").onclick = () => act(() => api("POST", "/api/desk/offer/reject", { call_id: card.call_id }), "Call returned to the queue");
  $("hold").onclick = () => {
    const on = !card.held;
    act(() => api("POST", `/api/desk/calls/${card.call_id}/hold`, { on })).then(() => { card.held = on; renderCard(); });
  };
  $("xfer-to").onchange = () => $("xfer-handler").classList.toggle("hidden", $("xfer-to").value !== "handler");
  $("transfer").onclick = () => {
    const v = $("xfer-to").value;
    const body = v === "handler" ? { to_handler: $("xfer-handler").value.trim() } : { to_line: v.slice(5) };
    act(() => api("POST", `/api/desk/calls/${card.call_id}/transfer`, body), "Call transferred");
  };
  $("end").onclick = () => act(() => api("POST", `/api/desk/calls/${card.call_id}/end`));
  $("wrapup").addEventListener("submit", async (e) => {
    e.preventDefault();
    const thrive = Object.fromEntries(THRIVE.map((k) => [k, $("th-" + k).value.trim()]));
    await act(() => api("POST", `/api/desk/calls/${formCallId}/wrapup`,
      { thrive, grade: $("grade").value, notes: $("notes").value.trim() }), "Grading saved");
    $("wrapup-status").textContent = "Saved " + fmtClock(CR.serverNow());
  });
  $("ready").onclick = () => act(() => api("POST", "/api/desk/wrapup/end"));
}

(async () => {
  await CR.loadMe();
  CR.topbar("Handler desk · " + (CR.me.handler_id || ""));
  wire();
  CR.live(onLive, loadCallbacks);   // after a resync or reconnect: call-backs may have changed
  loadCallbacks();
  setInterval(tick, 250);
  setInterval(loadCallbacks, 30000);
})();
