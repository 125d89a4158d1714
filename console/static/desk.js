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
let linePriority = { "999": 0, "101": 1 };  // line -> priority class (0 most urgent)
let liveFinal = {};       // call_id -> final segments received since the last view
let partial = {};         // call_id -> {channel: segment} (replaced by the next)
let callbacks = [];
let formCallId = null;    // the call the grading form belongs to
let notices = {};         // call_id -> why live captions stopped
let draftTimer = null;    // debounce of the draft autosave
let draftSent = Promise.resolve();   // the last draft on its way to the server
let alerted = null;       // call id whose ringing was last announced
let pinned = null;        // an earlier call whose unsaved grading the handler reopened
const DRAFT_KEY = (cid) => "cr-draft:" + cid;

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
  const after = view.after_call;
  $("btn-available").disabled = ["available", "ringing"].includes(view.state)
    || (view.state === "on_call" && after == null);
  $("btn-available").firstChild.textContent = view.state === "on_call" && after != null ? "Cancel not ready " : "Available ";
  $("btn-notready").firstChild.textContent = view.state === "on_call" ? "Not ready after this call " : "Not ready ";
  const ac = $("after-call");
  ac.classList.toggle("hidden", after == null);
  ac.textContent = after != null ? `Not ready after this call: ${after}` : "";
  [card, phase] = cardOf(view);
  renderCard();
  renderForm();
  alertPop();
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
  renderLocation();
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
  renderConsult();
  const xs = $("xfer-to");
  if (xs.options.length !== lines.length + 1) {
    xs.replaceChildren(...lines.map((l) => el("option", { value: "line:" + l, text: `Line ${l} queue` })),
      el("option", { value: "handler", text: "Named handler…" }));
  }
  renderTranscript();
  tick();
}

// Where the caller is: the text with its uncertainty and method, and the force's map.
function renderLocation() {
  const lv = card.location_view, loc = $("pop-location"), map = $("pop-map");
  map.classList.add("hidden");
  if (!lv) { loc.textContent = "not provided"; return; }
  const parts = [lv.text || lv.address || "location sent"];
  if (lv.uncertainty_m != null && !/±/.test(lv.text || "")) parts.push(`±${Math.round(lv.uncertainty_m)} m`);
  if (lv.method) parts.push(lv.source === "line" ? "by line (where this line is)" : `by ${lv.method}`);
  if (lv.by === "reference") parts.push("by reference (not fetched)");
  if (lv.error) parts.push(`unread: ${lv.error}`);
  loc.textContent = parts.join(" · ");
  if (lv.map_url) { map.href = lv.map_url; map.classList.remove("hidden"); }
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

function formValues() {
  return { thrive: Object.fromEntries(THRIVE.map((k) => [k, $("th-" + k).value])),
           grade: $("grade").value, notes: $("notes").value };
}
function formEmpty(v) { return !v.grade && !v.notes.trim() && !THRIVE.some((k) => v.thrive[k].trim()); }
function formComplete(v) { return !!v.grade && THRIVE.every((k) => v.thrive[k].trim()); }

// What is typed is kept with its call as it is typed (this browser and the server), so a
// new call popping never takes it away or moves it onto the wrong call.
function saveDraftNow() {
  clearTimeout(draftTimer); draftTimer = null;
  if (!formCallId) return;
  const v = formValues(), cid = formCallId;
  try { localStorage.setItem(DRAFT_KEY(cid), JSON.stringify({ ...v, at: CR.serverNow() })); } catch (e) { /* private mode */ }
  // The server keeps it in the store (a restart or another node's page finds it there).
  draftSent = api("POST", `/api/desk/calls/${cid}/draft`, v).then(() => {
    if (formCallId === cid) $("wrapup-status").textContent = "Draft kept " + fmtClock(CR.serverNow());
  }).catch(() => {
    if (formCallId === cid) $("wrapup-status").textContent = "Draft kept in this browser only";
  });
}
function draftLater() { clearTimeout(draftTimer); draftTimer = setTimeout(saveDraftNow, 400); }

function loadDraft(target) {
  let d = null;
  try { d = JSON.parse(localStorage.getItem(DRAFT_KEY(target.call_id)) || "null"); } catch (e) { d = null; }
  // This browser's copy or the store's, whichever was typed last (another desk may
  // have carried on with it).
  const srv = target.draft;
  if (!d || (srv && (srv.at || 0) > (d.at || 0))) d = srv;
  d = d || {};
  for (const k of THRIVE) $("th-" + k).value = (d.thrive || {})[k] || "";
  $("grade").value = d.grade || target.grade || "";
  $("notes").value = d.notes || "";
}

function renderDrafts() {
  const box = $("drafts");
  const ds = (view.drafts || []).filter((d) => !pinned || d.call_id !== pinned.call_id);
  box.classList.toggle("hidden", !ds.length);
  box.replaceChildren(...(ds.length ? [el("span", { class: "small", text: "Unsaved grading:" })] : []),
    ...ds.map((d) => el("button", { class: "small-btn draft-open", dataset: { callId: d.call_id },
      text: `call from ${d.caller || "withheld"} (${d.line})`, onclick: () => { pinned = d; renderForm(); } })));
}

function renderForm() {
  const form = $("wrapup");
  if (pinned && !(view.drafts || []).some((d) => d.call_id === pinned.call_id)) pinned = null;
  renderDrafts();
  const target = view.wrapup || view.call || pinned;
  if (!target) { if (draftTimer) saveDraftNow(); form.classList.add("hidden"); formCallId = null; return; }
  form.classList.remove("hidden");
  if (formCallId !== target.call_id) {
    if (draftTimer) saveDraftNow();      // the previous call's typing stays with it
    formCallId = target.call_id;
    form.dataset.callId = target.call_id;
    loadDraft(target);
    $("wrapup-status").textContent = target.graded ? "Saved" : "";
  }
  $("wrapup-title").textContent = (view.wrapup ? "Wrap-up" : "Grading") + ` — THRIVE · call from ${target.caller || "withheld"}`;
  $("ready").classList.toggle("hidden", !view.wrapup);
  const due = view.grading_due && view.grading_due === target.call_id;
  const note = $("grading-note");
  note.classList.toggle("hidden", !due);
  note.textContent = due ? "Grading required on this line: save a grade and every THRIVE field before your next call." : "";
  $("ready").disabled = !!due;
  $("extend").classList.toggle("hidden", !(view.wrapup && view.wrapup_deadline && view.wrapup_extend_max));
  $("extend").disabled = (view.wrapup_extended || 0) + 30 > (view.wrapup_extend_max || 0);
  tickWrapup();
}

function tickWrapup() {
  const t = $("wrapup-timer");
  if (!view || !view.wrapup || view.state !== "wrapup") { t.classList.add("hidden"); return; }
  t.classList.remove("hidden");
  if (view.wrapup_deadline) {
    const left = view.wrapup_deadline - CR.serverNow();
    t.textContent = `Next call in ${fmtDur(Math.max(0, left))}`;
    t.classList.toggle("urgent", left < 10);
  } else {
    t.textContent = view.grading_due ? "Waiting for your grading" : "Wrap-up";
    t.classList.add("urgent");
  }
}

function tick() {
  tickWrapup();
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
  for (const l of q.lines) if (l.priority != null) linePriority[l.name] = l.priority;
  $("qsum").replaceChildren(...q.lines.map((l) => el("div", { class: "fig l" + l.name },
    el("div", { class: "v", text: String(l.waiting) }),
    el("div", { class: "k", text: `${l.name} · longest ${fmtDur(l.longest_wait)}` }))));
}

const OUTCOMES = ["Spoke to caller — no police need", "Spoke to caller — incident raised",
  "No reply — voicemail left", "No reply", "Number unobtainable"];

// The call-back list keeps its order (first abandon) whatever happens to an entry, and
// each row is keyed by its id, so the row under the pointer is always the same caller.
// Only the handler who took an entry can release or close it.
async function loadCallbacks() {
  try { callbacks = await api("GET", "/api/callbacks"); } catch (e) { return; }
  const box = $("callbacks");
  const open = callbacks.filter((c) => c.state !== "done");
  if (!open.length) { box.replaceChildren(el("div", { class: "muted", text: "None waiting" })); return; }
  const me = CR.me.handler_id;
  const focused = document.activeElement && document.activeElement.closest(".cb-item");
  const keep = focused ? focused.dataset.cbId : null;
  box.replaceChildren(...open.map((c) => {
    const mine = c.state === "taken" && c.taken_by === me;
    const n = (c.attempts || []).length || 1;
    const outId = "cb-out-" + c.cb_id;
    return el("div", { class: "cb-item" + (mine ? " mine" : ""), dataset: { cbId: c.cb_id } },
      el("div", { class: "top" }, el("b", { class: "mono", text: c.caller || "withheld" }),
        el("span", { class: "age", dataset: { at: c.abandoned_at }, text: "" })),
      el("div", { class: "muted small", text: `${c.line} · first ${fmtClock(c.abandoned_at)} · waited ${fmtDur(c.wait)}`
        + (n > 1 ? ` · ${n} calls, last ${fmtClock(c.last_at)}` : "") }),
      c.state === "taken" ? el("div", { class: "small", text: mine ? "Taken by you" : "Taken by " + c.taken_by }) : null,
      el("div", { class: "btns" },
        c.state === "open" ? el("button", { class: "primary take", text: "Take", onclick: () =>
          act(() => api("POST", `/api/callbacks/${c.cb_id}/take`), `Call-back ${c.caller} taken`).then(loadCallbacks) }) : null,
        mine && c.caller ? el("button", { class: "primary dial", text: "Dial", "aria-label": `Dial ${c.caller}`, onclick: () =>
          act(() => api("POST", `/api/callbacks/${c.cb_id}/dial`), `Calling ${c.caller}: your phone rings when they answer`) }) : null,
        mine ? el("button", { class: "release", text: "Release", onclick: () =>
          act(() => api("POST", `/api/callbacks/${c.cb_id}/release`), `Call-back ${c.caller} released`).then(loadCallbacks) }) : null),
      mine ? el("div", { class: "btns" },
        el("label", { class: "sr-only", for: outId, text: `Outcome of the call-back to ${c.caller}` }),
        el("select", { id: outId, class: "outcome" }, el("option", { value: "", text: "Outcome…" }),
          ...OUTCOMES.map((o) => el("option", { text: o }))),
        el("button", { class: "close", text: "Close", onclick: () => {
          const o = $(outId).value;
          if (!o) { CR.toast("Choose the outcome first", "error"); return; }
          act(() => api("POST", `/api/callbacks/${c.cb_id}/complete`, { outcome: o }), `Call-back ${c.caller} closed: ${o}`).then(loadCallbacks);
        } })) : null);
  }));
  if (keep) box.querySelector(`.cb-item[data-cb-id="${keep}"] button`)?.focus();
  tickCallbacks();
  if (card) renderCard();
}
function tickCallbacks() {
  for (const a of document.querySelectorAll("#callbacks .age")) a.textContent = fmtDur(CR.serverNow() - Number(a.dataset.at)) + " ago";
}

// Consult another agency (config consult_numbers): the caller is held with the prompt
// while it rings and while the handler speaks to it; then join all three, hand the caller
// over, or go back to the caller.
let consultState = null;   // {call_id, agency, step, event} from call.consult
function renderConsult() {
  const names = (view && view.consult_numbers) || [];
  const sel = $("consult-to");
  if (sel.options.length !== names.length) sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  $("consult-box").classList.toggle("hidden", !names.length);
  const c = consultState && card && consultState.call_id === card.call_id && consultState.event !== "CONSULT_END" ? consultState : null;
  const talking = c && c.step !== "ringing";
  $("consult").classList.toggle("hidden", !!c);
  sel.classList.toggle("hidden", !!c);
  $("conference").classList.toggle("hidden", !talking || c.step === "conference");
  $("consult-transfer").classList.toggle("hidden", !talking);
  $("consult-return").classList.toggle("hidden", !c);
  $("consult-state").textContent = !c ? "" : c.step === "ringing" ? `Calling ${c.agency}… the caller hears the hold prompt`
    : c.step === "conference" ? `In conference with the caller and ${c.agency}`
    : `Speaking to ${c.agency}; the caller hears the hold prompt`;
}
function consultStep(step, body = {}) {
  return act(() => api("POST", `/api/desk/calls/${card.call_id}/consult`, { step, ...body }));
}

function onLive(m) {
  if (m.type === "call.consult") { consultState = m; renderConsult(); }
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
    case "call.callback_changed":
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

function notReady() {
  const reason = $("nr-reason").value;
  act(() => api("POST", "/api/desk/state", { state: "not_ready", reason }),
    view && view.state === "on_call" ? `Not ready after this call (${reason})` : undefined);
}
function available() {
  if (view && view.wrapup && view.state === "wrapup") { $("ready").click(); return; }
  act(() => api("POST", "/api/desk/state", { state: "available" }));
}
function rejectCall() {
  if (phase !== "ringing" || !card) return;
  const dlg = $("reject-dlg");
  $("reject-why-echo").textContent = $("reject-why").value;
  dlg.dataset.callId = card.call_id;
  dlg.showModal();
}
function endCall() {
  if (phase !== "connected" || !card) return;
  $("end-text").textContent = `The caller (${card.caller || "withheld"}) will be cut off. Record why in your notes.`;
  $("end-dlg").dataset.callId = card.call_id;
  $("end-dlg").showModal();
  $("end-cancel").focus();
}

// Shortcuts: Alt + a letter, so typing in the grading form never triggers one.
const KEYS = { a: () => phase === "ringing" && $("accept").click(), r: rejectCall,
  h: () => phase === "connected" && $("hold").click(), t: () => phase === "connected" && $("transfer").click(),
  x: endCall, y: available, n: notReady };

// ---- alerts: a tone (distinct for 999), the title and a desktop notification -----
let audio = null;
function tone(freq, start, dur) {
  const o = audio.createOscillator(), g = audio.createGain();
  o.frequency.value = freq; o.type = "square";
  g.gain.setValueAtTime(0.0001, audio.currentTime + start);
  g.gain.exponentialRampToValueAtTime(0.25, audio.currentTime + start + 0.01);
  g.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + start + dur);
  o.connect(g).connect(audio.destination);
  o.start(audio.currentTime + start); o.stop(audio.currentTime + start + dur + 0.02);
}
function ring(is999) {
  window.__tones = (window.__tones || []).concat(is999 ? "999" : "101");
  try {
    audio = audio || new AudioContext();
    if (is999) { for (let i = 0; i < 3; i++) tone(1400, i * 0.18, 0.12); }  // urgent triple
    else { tone(660, 0, 0.35); }
  } catch (e) { /* no audio device */ }
}
let ringTimer = null, titleTimer = null;
const BASE_TITLE = document.title;
function alertPop() {
  const ringing = phase === "ringing" && card;
  if (!ringing) {
    clearInterval(ringTimer); clearInterval(titleTimer); ringTimer = titleTimer = null;
    document.title = BASE_TITLE; alerted = null; return;
  }
  if (alerted === card.call_id) return;
  alerted = card.call_id;
  const is999 = card.line === "999";
  const what = `${is999 ? "999 EMERGENCY" : card.line} call — ${card.caller || "withheld"}`;
  ring(is999);
  $("announce").textContent = `Ringing: ${what}. Alt+A to accept, Alt+R to reject.`;
  clearInterval(ringTimer);
  ringTimer = setInterval(() => ring(is999), is999 ? 1500 : 3000);
  let on = false;
  clearInterval(titleTimer);
  document.title = "☎ " + what;
  titleTimer = setInterval(() => { on = !on; document.title = on ? "☎ " + what : "▶ " + what; }, 1000);
  if ("Notification" in window && Notification.permission === "granted" && document.hidden !== false) {
    try { new Notification("controlroom: " + what, { body: card.location || "Ringing on your phone", tag: "cr-offer", requireInteraction: is999 }); }
    catch (e) { /* not allowed here */ }
  }
}

function wire() {
  $("btn-available").onclick = () => {
    if (view && view.state === "on_call" && view.after_call != null) {
      act(() => api("POST", "/api/desk/state", { state: "available" }), "You will be available after this call");
    } else available();
  };
  $("btn-notready").onclick = notReady;
  $("btn-logout-q").onclick = () => act(() => api("POST", "/api/desk/state", { state: "logged_out", reason: "left queue" }));
  $("accept").onclick = () => act(() => api("POST", "/api/desk/offer/accept", { call_id: card.call_id }));
  $("reject").onclick = rejectCall;
  $("reject-why").onchange = () => { $("reject-why-echo").textContent = $("reject-why").value; };
  $("reject-dlg").addEventListener("close", () => {
    const dlg = $("reject-dlg");
    if (dlg.returnValue !== "reject") return;
    const why = $("reject-why").value;
    act(() => api("POST", "/api/desk/offer/reject", { call_id: dlg.dataset.callId, reason: why }),
      `Call returned to its place in the queue; you are not ready (rejected: ${why})`);
  });
  $("hold").onclick = () => {
    const on = !card.held;
    act(() => api("POST", `/api/desk/calls/${card.call_id}/hold`, { on })).then(() => { card.held = on; renderCard(); });
  };
  $("xfer-to").onchange = () => $("xfer-handler").classList.toggle("hidden", $("xfer-to").value !== "handler");
  $("transfer").onclick = () => {
    const v = $("xfer-to").value;
    const body = v === "handler" ? { to_handler: $("xfer-handler").value.trim() } : { to_line: v.slice(5) };
    if (body.to_line && (linePriority[body.to_line] ?? 0) > (card.priority ?? linePriority[card.line] ?? 0)) {
      // A 999 going to a less urgent queue: say so first (it keeps its priority there).
      if (!window.confirm(`This is a line ${card.line} call. Move it to the ${body.to_line} queue? ` +
                          "It keeps its priority and goes before every call waiting there.")) return;
      body.confirm = true;
    }
    act(() => api("POST", `/api/desk/calls/${card.call_id}/transfer`, body), "Call transferred");
  };
  $("end").onclick = endCall;
  $("consult").onclick = () => consultStep("call", { agency: $("consult-to").value });
  $("conference").onclick = () => consultStep("conference");
  $("consult-transfer").onclick = () => consultStep("transfer");
  $("consult-return").onclick = () => consultStep("return");
  $("end-dlg").addEventListener("close", () => {
    const dlg = $("end-dlg");
    if (dlg.returnValue === "end") act(() => api("POST", `/api/desk/calls/${dlg.dataset.callId}/end`));
  });
  for (const id of [...THRIVE.map((k) => "th-" + k), "grade", "notes"]) $(id).addEventListener("input", draftLater);
  $("wrapup").addEventListener("submit", async (e) => {
    e.preventDefault();
    const cid = formCallId, v = formValues();
    if (formEmpty(v)) { CR.toast("Nothing to save: the grading is empty", "error"); return; }
    if (view.grading_required && !formComplete(v)) { CR.toast("This line needs a grade and every THRIVE field", "error"); return; }
    const thrive = Object.fromEntries(THRIVE.map((k) => [k, v.thrive[k].trim()]));
    // No draft may land after the grading (it would come back as unsaved work).
    clearTimeout(draftTimer); draftTimer = null;
    await draftSent.catch(() => {});
    await act(() => api("POST", `/api/desk/calls/${cid}/wrapup`, { thrive, grade: v.grade, notes: v.notes.trim() }),
      `Grading saved for the call from ${(view.wrapup || view.call || {}).caller || "withheld"}`);
    try { localStorage.removeItem(DRAFT_KEY(cid)); } catch (x) { /* ignore */ }
    $("wrapup-status").textContent = "Saved " + fmtClock(CR.serverNow());
    view.drafts = (view.drafts || []).filter((d) => d.call_id !== cid);
    if (pinned && pinned.call_id === cid) { pinned = null; renderForm(); }
  });
  $("ready").onclick = () => act(() => api("POST", "/api/desk/wrapup/end"));
  $("extend").onclick = () => act(() => api("POST", "/api/desk/wrapup/extend", { seconds: 30 }), "Wrap-up extended by 30 s");
  $("alerts-on").onclick = async () => {
    try { audio = audio || new AudioContext(); await audio.resume(); } catch (e) { /* none */ }
    if ("Notification" in window && Notification.permission === "default") await Notification.requestPermission();
    $("alerts-on").textContent = "Sound on" + ("Notification" in window && Notification.permission === "granted" ? ", notifications on" : "");
  };
  document.addEventListener("keydown", (e) => {
    if (!e.altKey || e.ctrlKey || e.metaKey) return;
    const fn = KEYS[e.key.toLowerCase()];
    if (!fn || document.querySelector("dialog[open]")) return;
    e.preventDefault();
    fn();
  });
  window.addEventListener("beforeunload", () => { if (draftTimer) saveDraftNow(); });
}

(async () => {
  await CR.loadMe();
  CR.topbar("Handler desk · " + (CR.me.handler_id || ""));
  wire();
  CR.live(onLive, loadCallbacks);   // after a resync or reconnect: call-backs may have changed
  loadCallbacks();
  setInterval(tick, 250);
  setInterval(tickCallbacks, 1000);
  setInterval(loadCallbacks, 30000);
})();
