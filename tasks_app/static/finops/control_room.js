// The control room (templates/admin/control_room.html): polls the control-room API and redraws its tables.
// Text goes in with textContent only (never innerHTML): error messages and names are data, not markup.
(function () {
  "use strict";

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }

  function link(text, href) {
    return href ? el("a", text, { href: href }) : el("span", text);
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
    const s = Math.round(ms / 1000);
    return s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function wrapLink(node, href) {
    if (!href) return node;
    const a = el("a", null, { href: href });
    a.appendChild(node);
    return a;
  }

  function badge(state) {
    return el("span", state || "—", { class: `finops-state finops-state-${state || "none"}` });
  }

  function fill(tableId, rows, columns, empty) {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren();
    if (!rows.length) {
      const tr = el("tr");
      tr.appendChild(el("td", empty, { colspan: String(columns) , class: "finops-empty" }));
      body.appendChild(tr);
      return;
    }
    rows.forEach((cells) => {
      const tr = el("tr");
      cells.forEach((cell) => {
        const td = el("td");
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "—" : String(cell);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function button(root, action, id, label, confirmText) {
    if (root.dataset.canTrigger !== "1") return el("span", "");
    const form = el("form", null, { method: "post", action: root.dataset.act, class: "finops-inline-form" });
    const token = document.querySelector("#control-room-csrf input[name=csrfmiddlewaretoken]");
    form.appendChild(el("input", null, { type: "hidden", name: "csrfmiddlewaretoken", value: token ? token.value : "" }));
    form.appendChild(el("input", null, { type: "hidden", name: "do", value: action }));
    form.appendChild(el("input", null, { type: "hidden", name: "id", value: String(id) }));
    const submit = el("button", label, { type: "submit", class: `button finops-act finops-act-${action}` });
    form.appendChild(submit);
    if (confirmText) form.addEventListener("submit", (e) => { if (!window.confirm(confirmText)) e.preventDefault(); });
    return form;
  }

  function show(id, visible) {
    document.getElementById(id).classList.toggle("finops-hidden", !visible);
  }

  function render(root, data) {
    const sys = data.system || {};
    const workers = sys.workers || [];
    document.getElementById("cr-workers-summary").textContent = !sys.broker_ok
      ? `Broker unreachable ${sys.error || ""}`
      : data.platform_admin ? `${workers.length} online` : (sys.workers_ok ? "online" : "none online");
    document.getElementById("cr-workers-summary").className = sys.workers_ok ? "finops-ok" : "finops-alert";
    const beat = sys.beat || {};
    const beatText = beat.age_s === null || beat.age_s === undefined ? "no heartbeat" : `heartbeat ${beat.age_s} s ago`;
    document.getElementById("cr-beat").textContent = `${beat.ok ? "alive" : "NOT running"}, ${beatText}${beat.leader ? ` (${beat.leader})` : ""}`;
    document.getElementById("cr-beat").className = beat.ok ? "finops-ok" : "finops-alert";
    const dead = document.getElementById("cr-dead-count");
    dead.textContent = `${data.dead_letters_waiting} waiting`;
    dead.className = data.dead_letters_waiting ? "finops-alert" : "finops-ok";

    show("cr-workers-module", data.platform_admin);
    show("cr-queues-module", data.platform_admin);
    show("cr-schedules-module", data.platform_admin);
    fill("cr-workers", workers.map((w) => [
      w.name, w.queues.join(", "), w.concurrency,
      w.active.length ? w.active.map((t) => t.task).join(", ") : "idle", w.reserved, `${w.seen_s_ago} s ago`,
    ]), 6, "No worker online");
    fill("cr-queues", (sys.queues || []).map((q) => [q.name, q.length]), 2, "—");
    fill("cr-schedules", data.schedules.map((s) => [
      link(s.name, s.url), s.task, s.schedule, s.enabled ? "yes" : "no", when(s.last_run_at),
      s.last_state ? wrapLink(badge(s.last_state), s.last_run_url) : "—", when(s.next_run_at),
      button(root, "run_now", s.id, "Run now"),
    ]), 8, "No schedules");
    fill("cr-runs", data.recent_runs.map((r) => [
      link(r.task, r.url), r.account || "(all accounts)", badge(r.state), r.triggered_by, when(r.enqueued_at),
      duration(r.duration_ms), r.error || "", r.cancellable ? button(root, "cancel", r.id, "Cancel", "Cancel this run?") : "",
    ]), 8, "No runs yet");
    const stats = [];
    Object.entries(data.stats).forEach(([window, rows]) => rows.forEach((s) => stats.push([
      s.task, window, s.finished, s.success_rate === null ? "—" : `${s.success_rate} %`, duration(s.p50_ms), duration(s.p95_ms),
    ])));
    fill("cr-stats", stats, 6, "No finished runs in the last 7 days");
    fill("cr-dead", data.dead_letters.map((d) => [
      link(d.task, d.url), d.account || "(all accounts)", d.error, when(d.created_at), button(root, "replay", d.id, "Replay"),
    ]), 5, "No dead letter waiting");
    document.getElementById("cr-updated").textContent = `Updated ${when(data.generated_at)}.`;
    root.dataset.refreshes = String(Number(root.dataset.refreshes || "0") + 1);
  }

  async function refresh(root) {
    const error = document.getElementById("cr-error");
    try {
      const response = await fetch(root.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(root, await response.json());
      error.textContent = "";
    } catch (exc) {
      error.textContent = `Refresh failed: ${exc.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("control-room");
    if (!root) return;
    refresh(root);
    window.setInterval(() => refresh(root), 1000 * Number(root.dataset.pollSeconds || "5"));
  });
})();
