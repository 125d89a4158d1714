// Auditor: transcript search, call view with timeline, transcript that follows playback,
// recording checksum verification. Every access asks for a justification first.
"use strict";

const $ = (id) => document.getElementById(id);
const { el, api, act, fmtDur, fmtClock, fmtDateTime } = CR;

let current = null;        // call detail shown
let pendingSeek = null;    // seconds to seek to once the audio is loaded
let lastJustification = "";

// Ask for the reason of this access; resolves to the text, or null if cancelled.
function justify(what) {
  return new Promise((resolve) => {
    const dlg = $("just-dlg");
    $("just-what").textContent = what;
    $("just-text").value = lastJustification;
    const onClose = () => {
      dlg.removeEventListener("close", onClose);
      const text = $("just-text").value.trim();
      if (dlg.returnValue === "ok" && text.length >= 5) { lastJustification = text; resolve(text); }
      else resolve(null);
    };
    dlg.addEventListener("close", onClose);
    dlg.returnValue = "";
    dlg.showModal();
    $("just-text").select();
  });
}

let lastSearch = null;     // body of the last search (to continue it further back)

async function search(e, before) {
  if (e) e.preventDefault();
  const query = before != null && lastSearch ? lastSearch.query : $("q").value.trim();
  if (!query) return;
  const justification = await justify(before != null
    ? `Continue the search for “${query}” further back` : `Search transcripts for “${query}”`);
  if (!justification) return;
  const body = { query, justification };
  if (before != null) body.before = before;
  for (const [k, id] of [["number", "f-number"], ["line", "f-line"], ["handler", "f-handler"], ["incident", "f-incident"], ["date_from", "f-from"], ["date_to", "f-to"]]) {
    const v = $(id).value.trim();
    if (v) body[k] = v;
  }
  const res = await act(() => api("POST", "/api/audit/search", body));
  $("hits-title").textContent = `Results — ${res.hits.length} hit${res.hits.length === 1 ? "" : "s"}`;
  // Very frequent words: the search ranks only the newest matches, and says so.
  const bounded = res.hits.find((h) => h.ranked_within_recent);
  $("hits-note").textContent = bounded
    ? `Very common words: ranked among the newest ${bounded.ranked_within_recent.toLocaleString("en-GB")} matching passages` +
      (bounded.matches_estimate ? ` (about ${bounded.matches_estimate.toLocaleString("en-GB")} in all)` : "") +
      ". Add words or filters (caller, handler, dates) to reach further back."
    : "";
  // A search on a big index stops at its time budget and says how far back it looked.
  lastSearch = body;
  const cov = res.coverage;
  if (cov && !cov.complete) {
    const back = cov.searched_back_to ? `calls after ${fmtDateTime(cov.searched_back_to)}` : "the newest calls";
    const more = el("button", { type: "button", id: "search-continue", text: "Continue further back" });
    more.addEventListener("click", () => search(null, cov.continue_before));
    $("hits-note").replaceChildren(
      ($("hits-note").textContent ? $("hits-note").textContent + " " : "") +
      `Searched back to ${back} only; narrow the time range or continue. `, more);
  }
  const box = $("hits");
  if (!res.hits.length) { box.replaceChildren(el("div", { class: "muted", text: "No matches." })); return; }
  box.replaceChildren(...res.hits.map((h, i) => el("div", { class: "hit", dataset: { callId: h.call_id, match: h.match || "exact" }, tabindex: 0,
    onclick: () => openCall(h.call_id, h.offset) },
    el("div", { class: "meta" },
      el("span", { class: "rank", text: "#" + (h.rank || i + 1) }),
      el("span", { class: "lineb-s l" + h.line, text: h.line }),
      el("span", { text: fmtDateTime(h.arrived_at) }),
      el("span", { class: "mono", text: h.caller }),
      h.handler_id ? el("span", { text: "handler " + h.handler_id }) : null,
      h.incident_number ? el("span", { class: "incident small", text: h.incident_number }) : null,
      el("span", { text: `${h.channel} @ ${fmtDur(h.offset)}` }),
      h.score !== undefined ? el("span", { class: "score", text: "score " + Number(h.score).toPrecision(3) }) : null,
      h.match && h.match !== "exact" ? el("span", { class: "matchkind", text: `${h.match} match`,
        title: h.match === "fuzzy" ? "found through a close spelling of a query word" : "found through a word that sounds like a query word" }) : null),
    el("div", { class: "snip" }, snippetOf(h)),
    h.matches && h.matches.length ? el("div", { class: "words" }, ...h.matches.map((m) =>
      el("button", { type: "button", class: "word" + (m.low_confidence ? " lowconf" : ""),
        title: m.low_confidence ? "low confidence: check the recording" : `play from ${fmtDur(m.at)}`,
        text: `${m.word} @ ${fmtDur(m.at)} ${m.channel}`,
        onclick: (ev) => { ev.stopPropagation(); openCall(h.call_id, m.at); } }))) : null)));
}

// The snippet as words (matched ones marked, uncertain ones underlined) when the search
// gives fragments; otherwise its <mark>ed text. Text nodes only: nothing said becomes markup.
function snippetOf(h) {
  if (!h.fragments || !h.fragments.length) return CR.marked(h.snippet);
  const frag = document.createDocumentFragment();
  h.fragments.forEach((f, i) => {
    if (i) frag.append(document.createTextNode(" "));
    let node = f.match ? el("mark", { text: f.text }) : document.createTextNode(f.text);
    if (f.low_confidence) node = el("span", { class: "lowconf", title: "low confidence" }, node);
    frag.append(node);
  });
  return frag;
}

async function openCall(callId, offset) {
  const justification = await justify(`Open call ${callId}: metadata, timeline and transcript`);
  if (!justification) return;
  const d = await act(() => api("POST", `/api/audit/calls/${encodeURIComponent(callId)}`, { justification }));
  current = d;
  pendingSeek = offset ?? null;
  const audio = $("audio");
  audio.pause(); audio.removeAttribute("src"); audio.load();
  renderCall();
  history.replaceState(null, "", "#call=" + encodeURIComponent(callId));
}

// Queue-log values: epoch times as clock times, other numbers to one decimal.
function fmtValue(v) {
  if (typeof v !== "number") return v;
  return v > 1e9 ? fmtClock(v) : Math.round(v * 10) / 10;
}

// Supervisor monitoring in the record: where in the recording each mode began or ended
// (a button that plays from there), and what the audio holds of it.
function monitorMark(t) {
  const at = (t.data || {}).recording_at;
  if (!t.event.startsWith("MONITOR") || typeof at !== "number") return [];
  const what = t.event === "MONITOR_END" ? "monitoring ended"
    : { whisper: "whisper: heard by the handler only, not in the recording",
        barge: "barge: the supervisor is in the recording (the caller heard them)",
        listen: "listen: nobody heard the supervisor" }[t.data.mode] || t.data.mode;
  return [" ", el("button", { class: "small-btn rec-mark", text: `▶ ${fmtDur(at)}`,
    "aria-label": `Play the recording from ${fmtDur(at)} (${what})`, onclick: () => seek(at) }),
    " ", el("span", { class: "rec-note", text: what })];
}

function renderCall() {
  const c = current.call;
  $("call-empty").classList.add("hidden");
  $("call").classList.remove("hidden");
  $("call").dataset.callId = c.call_id;
  $("c-line").textContent = c.line;
  $("c-line").className = "lineb" + (c.line === "999" ? " l999" : "");
  $("c-caller").textContent = `${c.caller}${c.display_name ? " · " + c.display_name : ""}`;
  $("c-when").textContent = `${fmtDateTime(c.arrived_at)} · call ${c.call_id}`;
  $("c-incident").textContent = c.incident_number ? `${c.incident_number}${c.grade ? " · grade " + c.grade : ""}` : "";
  const meta = [["Handler", c.handler_id], ["Waited", fmtDur(c.wait)], ["Talk", fmtDur(c.talk)],
    ["Ended by", c.ended_by ? `${c.ended_by} (${c.end_reason || ""})` : c.state], ["Location", c.location],
    ["Flags", (c.flags || []).join(", ")], ["Notes", c.notes]];
  if (c.thrive) meta.push(["THRIVE", Object.entries(c.thrive).map(([k, v]) => `${k}: ${v}`).join(" · ")]);
  $("c-meta").replaceChildren(...meta.filter(([, v]) => v).flatMap(([k, v]) => [el("div", { class: "k", text: k }), el("div", { text: String(v) })]));
  const rec = current.recording;
  const rb = $("c-rec");
  if (!rec) {
    rb.replaceChildren(el("span", { class: "muted", text: "No recording for this call." }));
  } else {
    rb.replaceChildren(
      el("div", {}, rec.verified ? el("span", { class: "verified", id: "rec-verified", text: "✔ Recording integrity verified (SHA-256 recomputed now)" })
        : el("span", { class: "mismatch", id: "rec-verified", text: "✖ CHECKSUM MISMATCH — recording altered or unreadable" + (rec.verify_error ? ": " + rec.verify_error : "") })),
      el("div", { class: "sha" }, el("span", { class: "muted", text: "sealed   " }), rec.sha256),
      el("div", { class: "sha" }, el("span", { class: "muted", text: "computed " }), rec.computed_sha256 || "–"),
      el("div", { class: "muted small", text: `duration ${fmtDur(rec.duration)}` }));
  }
  $("play-btn").disabled = !rec;
  $("export-btn").disabled = !rec;
  $("c-timeline").replaceChildren(...current.timeline.map((t) => el("tr", { dataset: { event: t.event } },
    el("td", { text: fmtClock(t.at) }), el("td", { text: t.event }), el("td", { text: t.handler_id || "" }),
    el("td", { class: "muted" }, Object.entries(t.data || {}).map(([k, v]) => `${k}=${fmtValue(v)}`).join(" "),
      ...monitorMark(t)))));
  $("c-transcript").replaceChildren(...current.transcript.map((s, i) => el("div", {
    class: `tl ${s.channel} seekable`, dataset: { i, start: s.start, end: s.end },
    onclick: () => seek(s.start) },
    el("span", { class: "who" }, s.channel === "caller" ? "Caller" : "Handler", el("span", { class: "ts", text: fmtDur(s.start) })),
    s.text)));
  if (!current.transcript.length) $("c-transcript").append(el("div", { class: "muted", text: "No transcript." }));
  follow(pendingSeek ?? -1);
}

async function loadAudio(autoplay) {
  const cid = current.call.call_id;
  const justification = await justify(`Play the recording of call ${cid}`);
  if (!justification) return false;
  const t = await act(() => api("POST", `/api/audit/calls/${encodeURIComponent(cid)}/playback`, { justification }));
  const audio = $("audio");
  audio.src = t.url;
  audio.addEventListener("loadedmetadata", () => {
    if (pendingSeek !== null) { audio.currentTime = pendingSeek; pendingSeek = null; }
    if (autoplay) audio.play().catch(() => {});
  }, { once: true });
  return true;
}

async function seek(t) {
  const audio = $("audio");
  if (!audio.getAttribute("src")) { pendingSeek = t; await loadAudio(true); return; }
  audio.currentTime = t;
  follow(t);
}

// Highlight the segment being played and keep it in view.
function follow(t) {
  let cur = null;
  for (const n of document.querySelectorAll("#c-transcript .tl")) {
    const on = t >= Number(n.dataset.start) && t < Number(n.dataset.end) + 0.5;
    n.classList.toggle("current", on);
    if (on && !cur) cur = n;
  }
  if (cur) cur.scrollIntoView({ block: "nearest" });
}

function wire() {
  $("search-form").addEventListener("submit", search);
  $("play-btn").onclick = async () => {
    const audio = $("audio");
    if (audio.getAttribute("src")) { audio.play(); return; }
    await loadAudio(true);
  };
  $("export-btn").onclick = async () => {
    const cid = current.call.call_id;
    const justification = await justify(`Export (download) the recording of call ${cid}`);
    if (!justification) return;
    const t = await act(() => api("POST", `/api/audit/calls/${encodeURIComponent(cid)}/playback`, { justification, export: true }));
    location.href = t.url;
  };
  $("audio").addEventListener("timeupdate", () => follow($("audio").currentTime));
}

(async () => {
  await CR.loadMe();
  CR.topbar("Audit — transcripts and recordings");
  wire();
  const m = /#call=([^&]+)/.exec(location.hash);
  if (m) openCall(decodeURIComponent(m[1]), null);
})();
