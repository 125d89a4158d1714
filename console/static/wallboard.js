// Supervisor wallboard: live lines, waiting calls, handlers, chart, 999 wait alert.
"use strict";

const $ = (id) => document.getElementById(id);
const { el, api, act, fmtDur, pct } = CR;
const COLORS = { "999": "#e0243b", "101": "#2f7df6" };
const EXTRA = ["#f2a516", "#a371f7", "#2fbf71"];
const SL_TARGET = 0.9;

let snap = null;
let history = [];           // [{at, lines: {name: {waiting, sl, ...}}}]
let lastSampleAt = 0;
let editing = null;         // handler id whose skills dialog is open
let setting = null;         // {handler, state} of the open state dialog

function colorOf(name, i) { return COLORS[name] || EXTRA[i % EXTRA.length]; }
function age() { return snap ? CR.serverNow() - snap.at : 0; }

function slClass(sl) { return sl === null || sl === undefined ? "" : sl >= SL_TARGET ? "good" : sl >= 0.8 ? "meh" : "bad"; }

function renderTiles() {
  const hours = (snap.rolling_seconds || 3600) / 3600;
  const rollName = hours === 1 ? "last hour" : `last ${hours} h`;
  // Snapshots redraw the tiles every few seconds: keep what the supervisor is typing.
  const typing = document.activeElement && document.activeElement.classList.contains("wl")
    ? { id: document.activeElement.id, value: document.activeElement.value } : null;
  $("tiles").replaceChildren(...snap.lines.map((l) => {
    const longest = l.waiting.length ? l.longest_wait + age() : 0;
    const over = l.waiting.length && longest > l.threshold;
    const roll = l.rolling || {}, today = l.today || {};
    return el("div", { class: `tile line-${l.name}`, dataset: { line: l.name } },
      el("h2", { class: "name" }, l.name, el("span", { class: "muted small", text: `  target ${l.threshold}s` })),
      el("div", { class: "nums" },
        el("div", { class: "n" }, el("div", { class: "v waiting-count", text: String(l.waiting.length) }), el("div", { class: "k", text: "Waiting" })),
        el("div", { class: "n" }, el("div", { class: "v longest " + (over ? "bad" : ""), text: fmtDur(longest) }), el("div", { class: "k", text: "Longest wait" })),
        el("div", { class: "n" }, el("div", { class: "v sl-rolling " + slClass(roll.sl), text: pct(roll.sl) }), el("div", { class: "k", text: `SL ${rollName}` })),
        el("div", { class: "n" }, el("div", { class: "v sl-today " + slClass(l.sl_today), text: pct(l.sl_today) }), el("div", { class: "k", text: "SL since 00:00" }))),
      el("div", { class: "muted small def", text: `Since 00:00: ${today.answered_within ?? 0} answered within ${l.threshold}s of ${today.answered ?? 0} answered`
        + ` · ${today.abandoned_after ?? 0} abandoned after ${l.threshold}s · ${today.abandoned_within ?? 0} short abandons (not counted)`
        + ` · abandon rate ${pct(l.abandon_rate)}` }),
      wrapLimit(l));
  }));
  if (typing && $(typing.id)) { $(typing.id).value = typing.value; $(typing.id).focus(); }
  $("sl-def").textContent = (snap.sl_definition || "") + ` Rolling figure: the ${rollName}; the other since midnight.`;
}

// The most a handler may add to a wrap-up on this line (the supervisor's limit).
function wrapLimit(l) {
  const id = "wl-" + l.name;
  const inp = el("input", { id, class: "wl", type: "number", min: 0, max: 3600, step: 10,
    value: String(Math.round(l.wrapup_extend_max ?? 0)) });
  return el("div", { class: "wrap-limit small" },
    el("label", { for: id, text: "Wrap-up extension limit (s)" }), inp,
    el("button", { class: "wl-set", text: "Set", "aria-label": `Set the wrap-up extension limit of line ${l.name}`, onclick: () => {
      const v = Number(inp.value);
      if (inp.value === "" || !Number.isFinite(v)) { CR.toast("The limit must be a number of seconds", "error"); return; }
      act(() => api("POST", `/api/supervisor/lines/${encodeURIComponent(l.name)}/wrapup-limit`, { seconds: v }),
        `Line ${l.name}: handlers may extend wrap-up by up to ${v} s`);
    } }));
}

function renderCallbacks() {
  const cbs = snap.callbacks || [];
  const rows = cbs.map((c) => el("tr", { dataset: { cbId: c.cb_id } },
    el("td", { class: "mono", text: c.caller || "withheld" }),
    el("td", {}, el("span", { class: "lineb-s l" + c.line, text: c.line })),
    el("td", { class: "age", dataset: { at: c.abandoned_at }, text: fmtDur(CR.serverNow() - c.abandoned_at) }),
    el("td", { text: String((c.attempts || []).length || 1) }),
    el("td", { text: c.state === "taken" ? `taken by ${c.taken_by}` : "waiting" }),
    el("td", { class: "cb-acts" }, c.state === "taken" ? el("button", { class: "release", text: "Release",
      "aria-label": `Release the call-back to ${c.caller}`, onclick: () =>
      act(() => api("POST", `/api/callbacks/${c.cb_id}/release`), `Call-back ${c.caller} released`) }) : null,
      el("button", { class: "close", text: "Close…", "aria-label": `Close the call-back to ${c.caller}`, onclick: () => {
        // A supervisor may close any entry (e.g. the caller rang back and was helped).
        const o = prompt(`Outcome of the call-back to ${c.caller || "withheld"}:`, "Caller rang back and was answered");
        if (o && o.trim()) act(() => api("POST", `/api/callbacks/${c.cb_id}/complete`, { outcome: o.trim() }), `Call-back ${c.caller} closed`);
      } }))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No call-backs waiting" })));
  $("cbw").replaceChildren(...rows);
}

function openState(h, state) {
  setting = { handler: h.handler_id, state };
  const label = { available: "available", not_ready: "not ready", logged_out: "logged out" }[state];
  $("state-title").textContent = `Set ${h.name || h.handler_id} ${label}`;
  $("state-help").textContent = state === "available"
    ? "They will be offered the next call. A wrap-up still waiting for its grading ends (the waiver is logged)."
    : state === "not_ready" ? (h.state === "on_call" ? "They are on a call: they go not ready when it and its wrap-up end." : "They are offered no calls until they or you set them available.")
    : "They leave the queue; a ringing call goes back to its place.";
  $("state-reason").value = "";
  $("state-dlg").showModal();
}

function renderAlert() {
  const bad = snap.lines.filter((l) => l.priority === 0 && l.waiting.length && l.longest_wait + age() > l.threshold);
  const a = $("alert");
  if (!bad.length) { a.classList.add("hidden"); return; }
  a.classList.remove("hidden");
  a.textContent = bad.map((l) => `⚠ ${l.name} CALL WAITING ${fmtDur(l.longest_wait + age())} — over the ${l.threshold} s target (${l.waiting.length} waiting)`).join("   ");
}

function renderWaiting() {
  const rows = [];
  for (const l of snap.lines) {
    for (const w of l.waiting) {
      const inp = el("input", { class: "prio", type: "number", step: "1", value: String(w.priority), "aria-label": `New priority for the call from ${w.caller}` });
      rows.push(el("tr", { dataset: { callId: w.call_id } },
        el("td", {}, el("span", { class: "lineb-s l" + l.name, text: l.name })),
        el("td", { class: "mono", text: w.caller }),
        el("td", { class: "mono wait", dataset: { wait: w.wait }, text: fmtDur(w.wait + age()) }),
        el("td", { text: String(w.position) }),
        el("td", { text: String(w.priority) }),
        el("td", {}, inp, " ", el("button", { class: "reprio", text: "Set", onclick: () => {
          const p = Number(inp.value);
          if (inp.value === "" || !Number.isFinite(p)) { CR.toast("Priority must be a number", "error"); return; }
          act(() => api("POST", `/api/supervisor/calls/${w.call_id}/priority`, { priority: p }), `Call ${w.caller} re-prioritised to ${p}`);
        } }))));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No calls waiting" })));
  $("waiting").replaceChildren(...rows);
}

function renderHandlers() {
  const counts = {};
  for (const h of snap.handlers) counts[h.state] = (counts[h.state] || 0) + 1;
  $("hcount").replaceChildren(...["available", "ringing", "on_call", "wrapup", "not_ready", "logged_out"]
    .filter((s) => counts[s]).map((s) => el("span", { class: "pill st-" + s, text: `${CR.stateLabel(s)} ${counts[s]}` })));
  $("handlers").replaceChildren(...snap.handlers.map((h) => el("tr", { dataset: { handler: h.handler_id } },
    el("td", {}, el("b", { text: h.name || h.handler_id }), el("div", { class: "muted small", text: h.handler_id })),
    el("td", {}, el("span", { class: "pill st-" + h.state, text: CR.stateLabel(h.state) }),
      h.reason && h.state === "not_ready" ? el("div", { class: "muted small", text: h.reason }) : null),
    el("td", { class: "mono since", dataset: { since: h.since }, text: fmtDur(CR.serverNow() - h.since) }),
    el("td", { class: "mono small" }, h.call_id || "", h.call_id ? monitorControls(h) : null),
    el("td", { class: "skills-cell", text: Object.entries(h.skills || {}).map(([k, v]) => `${k}:${v}`).join(" ") }),
    el("td", { class: "hstate" },
      el("button", { class: "available", text: "Available", "aria-label": `Set ${h.handler_id} available`,
        disabled: ["available", "ringing", "on_call", "logged_out"].includes(h.state), onclick: () => openState(h, "available") }),
      " ",
      el("button", { class: "notready", text: "Not ready", "aria-label": `Set ${h.handler_id} not ready`,
        disabled: h.state === "not_ready" || h.state === "logged_out", onclick: () => openState(h, "not_ready") }),
      " ",
      el("button", { class: "logout", text: "Log out", "aria-label": `Log ${h.handler_id} out`,
        disabled: ["logged_out", "on_call"].includes(h.state), onclick: () => openState(h, "logged_out") }),
      " ",
      el("button", { class: "skills", text: "Skills", "aria-label": `Skills of ${h.handler_id}`, onclick: () => openSkills(h) })))));
}

// Supervisor listen / whisper / barge on a handler's live call: each asks why (logged
// in the access log with the call) and rings the supervisor's phone into the call.
function monitorControls(h) {
  const mons = (snap.monitors || []).filter((m) => m.call_id === h.call_id);
  const tag = mons.map((m) => `${m.mode} by ${m.supervisor}${m.state === "ringing" ? " (ringing)" : ""}`).join(", ");
  const btn = (mode, label) => el("button", { class: "monitor-" + mode, text: label,
    "aria-label": `${label} call of ${h.handler_id}`, onclick: () => {
      if (mode === "stop") { act(() => api("POST", `/api/supervisor/calls/${h.call_id}/monitor`, { mode, justification: "stop monitoring" }), "Monitor ended"); return; }
      const why = prompt(`Why ${mode} to the call of ${h.name || h.handler_id}? (logged)`, "quality assurance");
      if (why && why.trim().length >= 5) act(() => api("POST", `/api/supervisor/calls/${h.call_id}/monitor`, { mode, justification: why.trim() }),
        (r) => r && r.state === "on" ? `${label}: on your phone now` : `${label}: your phone ${r && r.phone ? "(" + r.phone + ") " : ""}rings`);
    } });
  if (h.state !== "on_call") return tag ? el("div", { class: "muted small monitor", text: tag }) : null;
  return el("div", { class: "small monitor" }, tag ? el("span", { class: "pill", text: tag }) : null,
    btn("listen", "Listen"), " ", btn("whisper", "Whisper"), " ", btn("barge", "Barge"), mons.length ? " " : null,
    mons.length ? btn("stop", "Stop") : null);
}

function tick() {
  if (!snap) return;
  for (const td of document.querySelectorAll("#waiting td.wait")) td.textContent = fmtDur(Number(td.dataset.wait) + age());
  for (const td of document.querySelectorAll("#handlers td.since")) td.textContent = fmtDur(CR.serverNow() - Number(td.dataset.since));
  for (const td of document.querySelectorAll("#cbw td.age")) td.textContent = fmtDur(CR.serverNow() - Number(td.dataset.at));
  for (const t of document.querySelectorAll(".tile")) {
    const l = snap.lines.find((x) => x.name === t.dataset.line);
    if (!l || !l.waiting.length) continue;
    const v = t.querySelector(".longest");
    v.textContent = fmtDur(l.longest_wait + age());
    v.classList.toggle("bad", l.longest_wait + age() > l.threshold);
  }
  renderAlert();
}

function drawChart() {
  const c = $("chart");
  const w = c.clientWidth, h = c.clientHeight;
  if (!w) return;
  const dpr = window.devicePixelRatio || 1;
  c.width = w * dpr; c.height = h * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const L = 36, R = 40, T = 10, B = 22;
  const pts = history.filter((s) => s.at).sort((a, b) => a.at - b.at);
  const now = CR.serverNow();
  const t0 = Math.min(now - 3600, pts.length ? pts[0].at : now - 3600);
  const names = snap ? snap.lines.map((l) => l.name) : [];
  let maxW = 4;
  for (const s of pts) for (const n of names) maxW = Math.max(maxW, s.lines[n]?.waiting || 0);
  const x = (t) => L + (t - t0) / (now - t0) * (w - L - R);
  const yW = (v) => T + (1 - v / maxW) * (h - T - B);
  const yS = (v) => T + (1 - v) * (h - T - B);
  g.strokeStyle = "#2b3644"; g.lineWidth = 1; g.fillStyle = "#8b9bb0"; g.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = T + i * (h - T - B) / 4;
    g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke();
    g.fillText(String(Math.round(maxW * (1 - i / 4))), 6, y + 4);
    g.fillText(`${Math.round(100 * (1 - i / 4))}%`, w - R + 6, y + 4);
  }
  for (let t = Math.ceil(t0 / 1800) * 1800; t <= now; t += 1800) {
    const d = new Date(t * 1000);
    g.fillText(`${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`, x(t) - 14, h - 6);
  }
  g.setLineDash([2, 4]); g.strokeStyle = "#2fbf71";
  g.beginPath(); g.moveTo(L, yS(SL_TARGET)); g.lineTo(w - R, yS(SL_TARGET)); g.stroke();
  names.forEach((n, i) => {
    const col = colorOf(n, i);
    g.strokeStyle = col; g.lineWidth = 2;
    g.setLineDash([]);
    g.beginPath();
    pts.forEach((s, j) => { const v = s.lines[n]?.waiting ?? 0; j ? g.lineTo(x(s.at), yW(v)) : g.moveTo(x(s.at), yW(v)); });
    g.stroke();
    g.setLineDash([6, 4]); g.lineWidth = 1.5;
    g.beginPath();
    let started = false;
    for (const s of pts) {
      const v = s.lines[n]?.sl;
      if (v === null || v === undefined) continue;
      started ? g.lineTo(x(s.at), yS(v)) : g.moveTo(x(s.at), yS(v));
      started = true;
    }
    g.stroke();
  });
  g.setLineDash([]);
  $("legend").replaceChildren(...names.flatMap((n, i) => [
    el("span", {}, el("i", { class: "sw", dataset: { c: colorOf(n, i) } }), `${n} waiting (left)`),
    el("span", {}, el("i", { class: "sw dashed" }), `${n} SL (right, dashed)`)]),
    el("span", {}, "target 90% (green dotted)"));
  document.querySelectorAll("#legend i").forEach((i, k) => { i.style.background = colorOf(names[Math.floor(k / 2)], Math.floor(k / 2)); });
}

function addSample() {
  if (!snap || snap.at - lastSampleAt < 30) return;
  lastSampleAt = snap.at;
  history.push({ at: snap.at, lines: Object.fromEntries(snap.lines.map((l) =>
    [l.name, { waiting: l.waiting.length, sl: l.sl_today, longest_wait: l.longest_wait }])) });
  const cutoff = snap.at - 4 * 3600;
  while (history.length && history[0].at < cutoff) history.shift();
}

function render() {
  renderTiles(); renderAlert(); renderWaiting(); renderCallbacks(); renderHandlers(); addSample(); drawChart();
}

function openSkills(h) {
  editing = h.handler_id;
  $("skills-title").textContent = `Skills — ${h.name || h.handler_id}`;
  const rows = $("skills-rows");
  rows.replaceChildren();
  for (const [k, v] of Object.entries(h.skills || {})) addSkillRow(k, v);
  addSkillRow("", "");
  $("skills-dlg").showModal();
}
function addSkillRow(name, level) {
  $("skills-rows").append(el("tr", {},
    el("td", {}, el("input", { class: "sk-name", value: name, placeholder: "skill (e.g. welsh)", size: 14, "aria-label": "Skill name" })),
    el("td", {}, el("input", { class: "sk-level", type: "number", min: 1, max: 10, value: String(level), size: 4, "aria-label": "Proficiency 1 to 10" }))));
}

function wire() {
  $("skills-add").onclick = () => addSkillRow("", "");
  $("skills-dlg").addEventListener("close", () => {
    if ($("skills-dlg").returnValue !== "save" || !editing) return;
    const skills = {};
    for (const tr of $("skills-rows").children) {
      const n = tr.querySelector(".sk-name").value.trim(), v = tr.querySelector(".sk-level").value;
      if (n && v !== "") skills[n] = Number(v);
    }
    act(() => api("POST", `/api/supervisor/handlers/${encodeURIComponent(editing)}/skills`, { skills }), `Skills of ${editing} saved`);
  });
  window.addEventListener("resize", drawChart);
  $("state-dlg").addEventListener("close", () => {
    const reason = $("state-reason").value.trim();
    if ($("state-dlg").returnValue !== "save" || !setting || !reason) return;
    const { handler, state } = setting;
    act(() => api("POST", `/api/supervisor/handlers/${encodeURIComponent(handler)}/state`, { state, reason }),
      `${handler} set ${state.replace("_", " ")}: ${reason}`);
  });
}

(async () => {
  await CR.loadMe();
  CR.topbar("Supervisor wallboard");
  wire();
  try { history = (await api("GET", "/api/wallboard/history")).samples; } catch (e) { history = []; }
  CR.live((m) => {
    if (m.type === "wallboard.snapshot" && Array.isArray(m.snapshot?.lines) && Array.isArray(m.snapshot?.handlers)) {
      snap = m.snapshot;
      CR.syncClock(snap.at);
      render();
    }
  });
  setInterval(tick, 500);
  setInterval(drawChart, 30000);
})();
