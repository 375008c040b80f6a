// A user's own account: password, app passwords, the Apple profile.
"use strict";

(() => {
  const { api, el, fill, say, size, when, start } = postroom;
  const $ = (id) => document.getElementById(id);

  async function loadMe() {
    const me = await api("GET", "/api/v1/me");
    $("me-address").textContent = me.address;
    $("me-messages").textContent = me.messages;
    $("me-usage").textContent = me.storage_limit === null ? size(me.octets)
      : `${size(me.octets)} of your ${size(me.storage_limit)} quota`;
    $("admin-link").hidden = !me.admin;
  }

  async function loadAppPasswords() {
    const list = await api("GET", "/api/v1/me/app-passwords");
    fill($("apppw-table").tBodies[0], list.map((p) => [
      p.name, when(p.created),
      el("button", {
        type: "button", class: "danger", onclick: async () => {
          try {
            await api("DELETE", `/api/v1/me/app-passwords/${p.id}`);
            say(`revoked ${p.name}`);
          } catch (e) {
            say(e.message, true);
          }
          await loadAppPasswords();
        },
      }, "Revoke"),
    ]), "No app passwords yet.");
  }

  function wire() {
    $("password-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      if (form.elements.new.value !== form.elements.repeat.value) {
        say("the new passwords differ", true);
        return;
      }
      try {
        await api("PUT", "/api/v1/me/password", {
          current: form.elements.current.value, new: form.elements.new.value,
        });
        form.reset();
        sessionStorage.setItem("postroom-password-changed", "1");
        location.reload();  // the session was replaced: pick up its new CSRF token
      } catch (e) {
        say(e.message, true);
      }
    });
    $("apppw-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      try {
        const created = await api("POST", "/api/v1/me/app-passwords", { name: form.elements.name.value });
        form.reset();
        $("apppw-created-name").textContent = created.name;
        $("apppw-created-password").textContent = created.password;
        $("apppw-created").hidden = false;
        say(`created ${created.name}`);
      } catch (e) {
        say(e.message, true);
      }
      await loadAppPasswords();
    });
  }

  start(async () => {
    wire();
    $("account-view").hidden = false;
    try {
      await Promise.all([loadMe(), loadAppPasswords()]);
    } catch (e) {
      say(e.message, true);
    }
    if (sessionStorage.getItem("postroom-password-changed")) {
      sessionStorage.removeItem("postroom-password-changed");
      say("password changed");
    }
  });
})();
