// controlroom console: helpers shared by every page (no framework, no build step).
"use strict";

const CR = (() => {
  let me = null;
  let skew = 0;  // server clock minus browser clock, seconds

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function toLogin() {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
  }

  async function loadMe() {
    const r = await fetch("/api/me", { credentials: "same-origin" });
    if (r.status === 401) { toLogin(); throw new ApiError(401, "not logged in"); }
    me = await r.json();
    return me;
  }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = me ? me.csrf : "";
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401 && path !== "/api/login") { toLogin(); }
    if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText);
    // 202 pending: sent on (global queue's routing leader), not done yet: say so
    if (r.status === 202 && data && data.pending) throw new ApiError(202, data.error);
    return data;
  }

  // el("div", {class: "x", text: "hi", onclick: fn, dataset: {a: 1}}, child, ...)
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k === "dataset") Object.assign(n.dataset, v);
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else if (k in n && typeof v !== "string") n[k] = v;
      else n.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      n.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return n;
  }

  function pad(n) { return String(n).padStart(2, "0"); }
  function fmtDur(s) {
    if (s === null || s === undefined || isNaN(s)) return "–";
    s = Math.max(0, Math.floor(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), ss = s % 60;
    return h ? `${h}:${pad(m)}:${pad(ss)}` : `${m}:${pad(ss)}`;
  }
  function fmtClock(epoch) {
    if (!epoch) return "–";
    const d = new Date(epoch * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDateTime(epoch) {
    if (!epoch) return "–";
    const d = new Date(epoch * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(epoch)}`;
  }
  function pct(x) { return x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`; }
  function serverNow() { return Date.now() / 1000 + skew; }
  function syncClock(serverAt) { if (serverAt) skew = serverAt - Date.now() / 1000; }
  function stateLabel(s) { return (s || "").replace("_", " "); }

  // A search snippet is HTML-escaped text whose only markup is <mark>..</mark>. It is
  // never parsed as HTML: split on the two tags, decode the escapes, insert text nodes,
  // so nothing a caller said can become markup.
  const ENTITIES = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'", "&#39;": "'" };
  function unescape(s) { return s.replace(/&(amp|lt|gt|quot|#x27|#39);/g, (m) => ENTITIES[m]); }
  function marked(snippet) {
    const frag = document.createDocumentFragment();
    let inMark = false;
    for (const part of String(snippet).split(/(<mark>|<\/mark>)/)) {
      if (part === "<mark>") { inMark = true; continue; }
      if (part === "</mark>") { inMark = false; continue; }
      if (!part) continue;
      const text = unescape(part);
      frag.append(inMark ? el("mark", { text }) : document.createTextNode(text));
    }
    return frag;
  }

  let toastTimer = null;
  function toast(msg, kind) {
    let t = document.querySelector(".toast");
    if (!t) { t = el("div", { class: "toast" }); document.body.append(t); }
    t.className = "toast" + (kind ? " " + kind : "");
    t.textContent = msg;
    t.classList.remove("hidden");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.add("hidden"), 5000);
  }
  async function act(fn, okMsg) {
    try { const r = await fn(); if (okMsg) toast(typeof okMsg === "function" ? okMsg(r) : okMsg); return r; }
    catch (e) { toast(e.message, "error"); throw e; }
  }

  function topbar(pageName) {
    const clock = el("span", { class: "clock", id: "clock" });
    const conn = el("span", { class: "conn down hidden", id: "conn", text: "offline" });
    const bar = el("header", { class: "topbar" },
      el("span", { class: "brand" }, el("b", { text: "■ " }), "controlroom"),
      el("h1", { class: "page", text: pageName }),
      el("span", { class: "spacer" }),
      conn,
      el("span", { class: "who", text: me ? `${me.username} · ${me.roles.join(", ")}` : "" }),
      clock,
      el("button", { text: "Log out", onclick: async () => {
        try { await api("POST", "/api/logout"); } finally { location.href = "/login"; }
      } }));
    document.body.prepend(bar);
    const tick = () => { clock.textContent = fmtClock(serverNow()); };
    tick(); setInterval(tick, 1000);
    return bar;
  }

  // state: "live" | "offline" | "resyncing"
  function setConn(state) {
    const c = document.getElementById("conn");
    if (!c) return;
    c.classList.remove("hidden");
    c.textContent = state === "resyncing" ? "resyncing…" : state;
    c.classList.toggle("down", state === "offline");
    c.classList.toggle("resync", state === "resyncing");
  }

  // Live feed that never silently stops. The server sends the page's full state first,
  // then events; after an overflow it sends {type: "resync", state: "start"}, the full
  // state again and {type: "resync", state: "done"}. A closed socket reconnects with
  // backoff (the state comes again); a socket silent for STALL_MS (the server pushes the
  // queue every 2 s) is closed and reconnected. While resyncing the top bar says so
  // (for at least RESYNC_SHOW_MS, so a person sees it); #conn[data-resyncs] counts them.
  // onResync() lets the page refetch what the feed does not carry (e.g. call-backs).
  const STALL_MS = 15000, RESYNC_SHOW_MS = 1500;
  function live(onMessage, onResync) {
    let delay = 500, opened = false, resyncs = 0, shownAt = 0, stall = null, pendingFirst = false;
    function resyncStart() {
      resyncs += 1;
      shownAt = Date.now();
      setConn("resyncing");
      const c = document.getElementById("conn");
      if (c) c.dataset.resyncs = String(resyncs);
    }
    function resyncDone() {
      setTimeout(() => { if (!document.getElementById("conn")?.classList.contains("down")) setConn("live"); },
        Math.max(0, shownAt + RESYNC_SHOW_MS - Date.now()));
      if (onResync) { try { onResync(); } catch (x) { /* a page bug must not stop the feed */ } }
    }
    function connect() {
      const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/ws");
      const alive = () => { clearTimeout(stall); stall = setTimeout(() => ws.close(), STALL_MS); };
      ws.onopen = () => {
        delay = 500;
        if (opened) { resyncStart(); pendingFirst = true; } else setConn("live");
        opened = true;
        alive();
      };
      ws.onmessage = (e) => {
        alive();
        let m; try { m = JSON.parse(e.data); } catch (x) { return; }
        if (m.type === "resync") { m.state === "start" ? resyncStart() : resyncDone(); return; }
        onMessage(m);
        if (pendingFirst) { pendingFirst = false; resyncDone(); }
      };
      ws.onclose = (e) => {
        clearTimeout(stall);
        pendingFirst = false;
        setConn("offline");
        if (e.code === 4001) { toLogin(); return; }   // session ended (logout / expiry)
        setTimeout(async () => {
          // A refused handshake looks like any drop: ask whether we are still logged in.
          try { const r = await fetch("/api/me", { credentials: "same-origin" }); if (r.status === 401) { toLogin(); return; } }
          catch (x) { /* server away: keep retrying */ }
          connect();
        }, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }
    connect();
  }

  return { api, loadMe, el, fmtDur, fmtClock, fmtDateTime, pct, serverNow, syncClock, stateLabel,
           marked, toast, act, topbar, live, get me() { return me; }, ApiError };
})();
