// Admin: the access log (read-only) and console users.
"use strict";

const $ = (id) => document.getElementById(id);
const { el, api, act, fmtDateTime } = CR;
let oldest = null;

let editing = null;   // the user in the dialog

function filters() {
  const p = new URLSearchParams();
  if ($("lf-user").value.trim()) p.set("username", $("lf-user").value.trim());
  if ($("lf-action").value) p.set("action", $("lf-action").value);
  if ($("lf-from").value) p.set("date_from", $("lf-from").value);
  if ($("lf-to").value) p.set("date_to", $("lf-to").value);
  return p;
}
function query(before) {
  const p = filters();
  p.set("limit", "100");
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
  $("users").replaceChildren(...us.map((u) => el("tr", { dataset: { user: u.username } },
    el("td", {}, el("b", { text: u.username }), u.handler_id ? el("div", { class: "muted small", text: "handler " + u.handler_id }) : null,
      u.phone ? el("div", { class: "muted small phone", text: "phone " + u.phone }) : null),
    el("td", { text: u.roles.join(", ") }),
    el("td", {}, el("span", { class: "pill " + (u.disabled ? "st-logged_out" : "st-available"), text: u.disabled ? "disabled" : "active" })),
    el("td", {}, el("button", { class: "edit", text: "Change", "aria-label": `Change user ${u.username}`, onclick: () => openUser(u) })))));
}

async function loadAdminLog() {
  const rows = await api("GET", "/api/admin/admin-log");
  $("admlog").replaceChildren(...(rows.length ? rows : []).map((r) => el("tr", {},
    el("td", { class: "mono", text: fmtDateTime(r.at) }), el("td", { text: r.username }),
    el("td", { text: r.action }), el("td", { text: r.target }),
    el("td", { class: "mono small", text: Object.keys(r.detail || {}).length ? JSON.stringify(r.detail) : "" }))));
  if (!rows.length) $("admlog").append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No changes yet." })));
}

function openUser(u) {
  editing = u;
  $("user-title").textContent = `User ${u.username}`;
  for (const c of document.querySelectorAll(".ed-role")) c.checked = u.roles.includes(c.value);
  $("ed-pass").value = "";
  $("ed-phone").value = u.phone || "";
  $("ed-disable").textContent = u.disabled ? "Re-enable" : "Disable";
  $("ed-disable").className = u.disabled ? "go" : "danger";
  $("user-dlg").showModal();
}
async function change(body, msg) {
  await act(() => api("POST", `/api/admin/users/${encodeURIComponent(editing.username)}`, body), msg);
  $("user-dlg").close();
  loadUsers(); loadAdminLog();
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
    loadUsers(); loadAdminLog();
  });
  $("lf-csv").onclick = () => {
    // A plain download: the browser saves the file; the export is written to the admin log.
    const a = el("a", { href: "/api/admin/access-log.csv?" + filters(), download: "access-log.csv" });
    document.body.append(a); a.click(); a.remove();
    setTimeout(loadAdminLog, 500);
  };
  $("ed-roles").onclick = () => {
    const roles = [...document.querySelectorAll(".ed-role:checked")].map((c) => c.value);
    change({ roles }, `Roles of ${editing.username}: ${roles.join(", ")}`);
  };
  $("ed-reset").onclick = () => change({ password: $("ed-pass").value }, `Password of ${editing.username} reset`);
  $("ed-phone-save").onclick = () => change({ phone: $("ed-phone").value.trim() },
    `Monitor phone of ${editing.username}: ${$("ed-phone").value.trim() || "the configured one"}`);
  $("ed-disable").onclick = () => change({ disabled: !editing.disabled },
    `${editing.username} ${editing.disabled ? "re-enabled" : "disabled"}`);
  loadLog(false);
  loadUsers();
  loadAdminLog();
})();
