// The admin page: every action is a call to the JSON admin API (see /api/v1/openapi.json).
"use strict";

(() => {
  const { api, el, fill, say, size, when, start } = postroom;
  const $ = (id) => document.getElementById(id);
  const loaders = { domains: loadDomains, users: loadUsers, aliases: loadAliases, queue: loadQueue, log: loadLog };

  // Runs an action, reports its error, reloads the tab it belongs to.
  async function act(tab, what, fn) {
    try {
      await fn();
      say(what);
    } catch (e) {
      say(e.message, true);
    }
    await loaders[tab]();
  }

  function button(label, onclick, cls) {
    return el("button", { type: "button", class: cls || "", onclick }, label);
  }

  // The DNS check looks every record up (SRV, MX, SPF, DKIM, DMARC, MTA-STS ...): the
  // summary goes in the domain's row, the records that need work in a table below.
  async function checkDns(name, cell) {
    cell.textContent = "checking…";
    try {
      const verdicts = await api("GET", `/api/v1/domains/${encodeURIComponent(name)}/dns/check`);
      const count = (s) => verdicts.filter((v) => v.status === s).length;
      const bad = verdicts.filter((v) => v.status !== "correct");
      cell.textContent = bad.length ? `${count("missing")} missing, ${count("wrong")} wrong`
        : `all ${verdicts.length} correct`;
      cell.className = `dns-status ${bad.length ? "error" : "ok"}`;
      $("dns-domain").textContent = name;
      fill($("dns-table").tBodies[0], verdicts.map((v) => [
        v.status, v.kind, v.name, v.rtype, v.value, v.found.join("; ") + (v.detail ? ` (${v.detail})` : ""),
      ]));
      $("dns-details").hidden = false;
    } catch (e) {
      cell.textContent = e.message;
      cell.className = "dns-status error";
    }
  }

  async function loadDomains() {
    const domains = await api("GET", "/api/v1/domains");
    fill($("domains-table").tBodies[0], domains.map((d) => {
      const status = el("span", { class: "dns-status" });
      return [
        d.name, d.users, d.aliases, when(d.created),
        el("span", {}, button("Check", () => checkDns(d.name, status)), status),
        button("Remove", () => act("domains", `removed ${d.name}`,
          () => api("DELETE", `/api/v1/domains/${encodeURIComponent(d.name)}`)), "danger"),
      ];
    }));
  }

  // "500M", "2G", "1048576" -> octets; "" or "none" -> null (unlimited).
  function parseSize(text) {
    const m = /^\s*(\d+)\s*([kmgt]?)i?b?\s*$/i.exec(text);
    if (!m) {
      if (/^\s*(none)?\s*$/i.test(text)) return null;
      throw new Error(`${text}: a size such as 500M or 2G, or none`);
    }
    return Number(m[1]) * 1024 ** "_kmgt".indexOf((m[2] || "_").toLowerCase());
  }

  function quota(u) {
    const limit = u.storage_limit === null ? "unlimited" : size(u.storage_limit);
    return `${size(u.octets)} / ${limit}`;
  }

  async function loadUsers() {
    const users = await api("GET", "/api/v1/users");
    fill($("users-table").tBodies[0], users.map((u) => [
      u.address, u.messages_limit === null ? u.messages : `${u.messages} / ${u.messages_limit}`,
      quota(u), u.admin ? "yes" : "no", when(u.created),
      el("span", {},
        button("Quota", () => {
          const answer = prompt(`Storage quota of ${u.address} (e.g. 500M, 2G; empty: unlimited)`,
            u.storage_limit === null ? "" : String(u.storage_limit));
          if (answer === null) return;
          act("users", `quota of ${u.address} set`, () => api("PUT",
            `/api/v1/users/${encodeURIComponent(u.address)}/quota`, { storage: parseSize(answer) }));
        }),
        button(u.admin ? "Revoke admin" : "Make admin", () => act("users",
          `${u.address} ${u.admin ? "is no longer" : "is now"} an admin`,
          () => api("PUT", `/api/v1/users/${encodeURIComponent(u.address)}/admin`, { admin: !u.admin }))),
        button("Remove", () => {
          if (!confirm(`Remove ${u.address} and all their mail?`)) return;
          act("users", `removed ${u.address}`,
            () => api("DELETE", `/api/v1/users/${encodeURIComponent(u.address)}`));
        }, "danger")),
    ]));
  }

  async function loadAliases() {
    const aliases = await api("GET", "/api/v1/aliases");
    fill($("aliases-table").tBodies[0], aliases.map((a) => [
      a.source, a.target,
      button("Remove", () => act("aliases", `removed ${a.source} -> ${a.target}`,
        () => api("DELETE", `/api/v1/aliases/${encodeURIComponent(a.source)}?target=${encodeURIComponent(a.target)}`)), "danger"),
    ]));
  }

  async function loadQueue() {
    const entries = await api("GET", "/api/v1/queue");
    fill($("queue-table").tBodies[0], entries.map((q) => {
      const id = encodeURIComponent(q.id);
      const pending = q.recipients.filter((r) => r.state === "pending").map((r) => r.address);
      return [
        q.id, q.sender || "<>", pending.join(", "), q.attempts,
        q.held ? "held" : when(q.next_attempt), q.last_error || "",
        el("span", { dataset: { qid: q.id } },
          button("Retry", () => act("queue", `${q.id} will be retried now`,
            () => api("POST", `/api/v1/queue/${id}/retry`))),
          q.held
            ? button("Release", () => act("queue", `released ${q.id}`, () => api("POST", `/api/v1/queue/${id}/release`)))
            : button("Hold", () => act("queue", `held ${q.id}`, () => api("POST", `/api/v1/queue/${id}/hold`))),
          button("Delete", () => {
            if (!confirm(`Delete ${q.id} without notice to its sender?`)) return;
            act("queue", `deleted ${q.id}`, () => api("DELETE", `/api/v1/queue/${id}`));
          }, "danger")),
      ];
    }), "The queue is empty.");
  }

  async function loadLog() {
    const entries = await api("GET", "/api/v1/log?limit=200");
    fill($("log-table").tBodies[0], entries.map((e) => [
      when(e.time), e.direction === "in" ? "in" : "out", e.qid, e.sender, e.recipient, e.result, e.detail,
    ]), "Nothing delivered yet.");
  }

  function showTab(name) {
    for (const b of document.querySelectorAll("nav [data-tab]")) {
      b.setAttribute("aria-selected", String(b.dataset.tab === name));
    }
    for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${name}`;
    loaders[name]().catch((e) => say(e.message, true));
  }

  function wire() {
    for (const b of document.querySelectorAll("nav [data-tab]")) {
      b.addEventListener("click", () => showTab(b.dataset.tab));
    }
    $("domain-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      act("domains", `added ${form.elements.name.value}`, async () => {
        await api("POST", "/api/v1/domains", { name: form.elements.name.value });
        form.reset();
      });
    });
    $("user-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      const address = form.elements.address.value;
      const password = form.elements.password.value;
      act("users", `added ${address}`, async () => {
        const user = await api("POST", "/api/v1/users",
          password ? { address, password } : { address, generate: true });
        form.reset();
        $("user-created").hidden = !user.password;
        $("user-created-address").textContent = user.address;
        $("user-created-password").textContent = user.password || "";
      });
    });
    $("alias-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      const targets = form.elements.targets.value.split(",").map((t) => t.trim()).filter(Boolean);
      act("aliases", `added ${form.elements.source.value}`, async () => {
        await api("POST", "/api/v1/aliases", { source: form.elements.source.value, targets });
        form.reset();
      });
    });
    $("queue-refresh").addEventListener("click", () => loadQueue().catch((e) => say(e.message, true)));
    $("queue-retry-all").addEventListener("click", () => act("queue", "every message will be retried now",
      () => api("POST", "/api/v1/flush", {})));
    $("log-refresh").addEventListener("click", () => loadLog().catch((e) => say(e.message, true)));
  }

  start(async (session) => {
    if (!session.admin) {
      $("not-admin").hidden = false;
      return;
    }
    wire();
    $("admin-view").hidden = false;
    try {
      const status = await api("GET", "/api/v1/status");
      $("server").textContent = `${status.hostname} · postroom ${status.version}`;
    } catch (e) { /* the tabs say what is wrong */ }
    showTab("domains");
  });
})();
