// Shared by the admin and account pages: API calls with the session's CSRF token, the
// login form, and safe DOM building (text is always set with textContent, never HTML).
"use strict";

const postroom = (() => {
  let csrf = "";

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    if (response.status !== 204) {
      const type = response.headers.get("Content-Type") || "";
      data = type.startsWith("application/json") ? await response.json() : await response.text();
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "onclick") node.addEventListener("click", value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(tbody, rows, empty) {
    tbody.replaceChildren();
    if (!rows.length) {
      const cells = tbody.closest("table").querySelectorAll("thead th").length;
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: cells }, empty || "(none)")));
      return;
    }
    for (const cells of rows) {
      tbody.append(el("tr", {}, ...cells.map((c) => el("td", {}, c))));
    }
  }

  function say(text, isError) {
    const box = document.getElementById("message");
    box.textContent = text;
    box.className = isError ? "error" : "ok";
  }

  function size(octets) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = octets, i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function when(seconds) {
    if (!seconds) return "-";
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  // Show the login form until a session exists; then call onSession(session).
  async function start(onSession) {
    const loginView = document.getElementById("login-view");
    const form = document.getElementById("login-form");
    const logout = document.getElementById("logout");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = document.getElementById("login-error");
      error.textContent = "";
      try {
        const session = await api("POST", "/api/v1/login", {
          address: form.elements.address.value,
          password: form.elements.password.value,
        });
        form.reset();
        begin(session);
      } catch (e) {
        error.textContent = e.message;
      }
    });
    logout.addEventListener("click", async () => {
      try { await api("POST", "/api/v1/logout"); } catch (e) { /* gone already */ }
      location.reload();
    });

    function begin(session) {
      csrf = session.csrf;
      loginView.hidden = true;
      logout.hidden = false;
      document.getElementById("who").textContent = session.address;
      onSession(session);
    }

    try {
      begin(await api("GET", "/api/v1/session"));
    } catch (e) {
      loginView.hidden = false;
    }
  }

  return { api, el, fill, say, size, when, start };
})();
