// Admin: the access log (read-only) and console users.
"use strict";

const $ = (id) => document.getElementById(id);
const { el, api, act, fmtDateTime } = CR;
let oldest = null;

function query(before) {
  const p = new URLSearchParams({ limit: "100" });
  if ($("lf-user").value.trim()) p.set("username", $("lf-user").value.trim());
  if ($("lf-action").value) p.set("action", $("lf-action").value);
  if (before) p.set("before_id", String(before));
  return "/api/admin/access-log?" + p;
}

async function loadLog(more) {
  const rows = await act(() => api("GET", query(more ? oldest : null)));
  const body = $("log");
  if (!more) body.replaceChildren();
  for (const r of rows) {
    const what = r.call_id ? `call ${r.call_id}` : `“${r.query}”` + (Object.keys(r.filters || {}).length ? " " + JSON.stringify(r.filters) : "");
    body.append(el("tr", { dataset: { action: r.action } },
      el("td", { class: "mono", text: String(r.id) }), el("td", { class: "mono", text: fmtDateTime(r.at) }),
      el("td", { text: r.username }), el("td", {}, el("span", { class: "pill", text: r.action })),
      el("td", { class: "mono small", text: what }), el("td", { text: r.justification }),
      el("td", { class: "muted small", text: r.client })));
  }
  if (rows.length) oldest = rows[rows.length - 1].id;
  $("older").disabled = rows.length < 100;
  if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No entries." })));
}

async function loadUsers() {
  const us = await api("GET", "/api/admin/users");
  $("users").replaceChildren(...us.map((u) => el("tr", {},
    el("td", {}, el("b", { text: u.username })), el("td", { text: u.roles.join(", ") }),
    el("td", { class: "muted", text: u.handler_id ? "handler " + u.handler_id : "" }))));
}

(async () => {
  await CR.loadMe();
  CR.topbar("Administration");
  $("log-filter").addEventListener("submit", (e) => { e.preventDefault(); loadLog(false); });
  $("older").onclick = () => loadLog(true);
  $("add-user").addEventListener("submit", async (e) => {
    e.preventDefault();
    const roles = [...document.querySelectorAll(".nu-role:checked")].map((c) => c.value);
    const body = { username: $("nu-name").value.trim(), password: $("nu-pass").value, roles };
    if ($("nu-hid").value.trim()) body.handler_id = $("nu-hid").value.trim();
    await act(() => api("POST", "/api/admin/users", body), `User ${body.username} created`);
    $("add-user").reset();
    loadUsers();
  });
  loadLog(false);
  loadUsers();
})();
