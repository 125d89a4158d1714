// Login page: POST /api/login, then go to the page asked for (same-origin paths only).
"use strict";
document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = document.getElementById("err");
  err.textContent = "";
  try {
    await CR.api("POST", "/api/login", {
      username: document.getElementById("username").value.trim(),
      password: document.getElementById("password").value,
    });
    const next = new URLSearchParams(location.search).get("next") || "/";
    // Only a local path: never bounce to another site after login.
    location.href = /^\/[a-z]*$/.test(next) ? next : "/";
  } catch (x) {
    err.textContent = x.message;
  }
});
