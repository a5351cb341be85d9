// catalog pages: live counts from the job-state stream, and token-guarded actions.
"use strict";

function liveDashboard(root) {
  const status = document.getElementById("live-status");
  const events = document.getElementById("events");
  const source = new EventSource("/jobs/stream");
  const last = new Map(); // job uuid -> the state it was counted in
  source.onopen = () => { status.textContent = "live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; };
  source.addEventListener("state", (message) => {
    const change = JSON.parse(message.data);
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = "/ui/jobs/" + change.uuid;
    link.textContent = change.uuid;
    item.append(change.time + " ", link, " " + change.pipeline + ": " + change.event + " → " + change.state);
    item.dataset.state = change.state;
    events.prepend(item);
    while (events.children.length > 50) events.lastChild.remove();
    const before = last.get(change.uuid) || (change.version === 1 ? null : undefined);
    last.set(change.uuid, change.state);
    if (before === undefined) return; // a job counted before the page loaded: its old state is unknown here
    bump(root.querySelector('.totals [data-count="' + change.state + '"]'), 1);
    if (before) bump(root.querySelector('.totals [data-count="' + before + '"]'), -1);
    const row = root.querySelector('tr[data-pipeline="' + CSS.escape(change.pipeline) + '"]');
    if (row) {
      bump(row.querySelector('[data-count="' + change.state + '"]'), 1);
      if (before) bump(row.querySelector('[data-count="' + before + '"]'), -1);
    }
  });
}

function bump(cell, by) {
  if (cell) cell.textContent = String(Number(cell.textContent) + by);
}

function actions() {
  for (const form of document.querySelectorAll("form.action")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = form.querySelector("output");
      const button = event.submitter;
      const url = button && button.value === "retry" ? button.getAttribute("formaction") : form.dataset.action;
      const token = form.elements.token.value;
      const headers = { "content-type": "application/json" };
      if (token) headers.authorization = "Bearer " + token;
      const response = await fetch(url, { method: "POST", headers, body: form.dataset.body, credentials: "omit" });
      const body = await response.json().catch(() => ({}));
      out.textContent = response.ok ? "done: " + (body.state || "ok")
        : "refused (" + response.status + "): " + ((body.error && body.error.message) || "");
      out.className = response.ok ? "result ok" : "result error";
      if (response.ok) setTimeout(() => location.reload(), 500);
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const dashboard = document.querySelector('[data-live="dashboard"]');
  if (dashboard) liveDashboard(dashboard);
  actions();
});
