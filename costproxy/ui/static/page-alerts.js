// Alerts: webhook subscriptions (add, test, rotate the secret, remove), their delivery history with
// redelivery, and the threshold and budget events.
import { $, ApiError, api, badge, clearErrors, fill, get, h, requireFields, secretBox, showError, table, timeEl,
  toast } from "./ui.js";

let eventTypes = [];

function webhookPath(sub, rest = "") { return `/api/v1/webhooks/${encodeURIComponent(sub.id)}${rest}`; }

function showSecret(title, sub) {
  const panel = $("#secret-panel");
  panel.hidden = false;
  fill(panel, secretBox(title, sub.secret, "Shown once: store it where the receiver verifies signatures."));
  panel.querySelector("input").focus();
}

async function test(sub) {
  const delivery = await api("POST", webhookPath(sub, "/test"));
  toast(`Test event queued (${delivery.id})`);
  await showDeliveries(sub);
}

async function rotate(sub) {
  if (!window.confirm("Rotate the signing secret? The receiver must switch to the new one.")) return;
  showSecret(`New secret for ${sub.url}`, await api("POST", webhookPath(sub, "/rotate-secret")));
}

async function remove(sub) {
  if (!window.confirm(`Remove the webhook ${sub.url}?`)) return;
  await api("DELETE", webhookPath(sub));
  toast("Webhook removed");
  $("#delivery-panel").hidden = true;
  await loadWebhooks();
}

async function redeliver(sub, delivery) {
  const again = await api("POST", webhookPath(sub, `/deliveries/${encodeURIComponent(delivery.id)}/redeliver`));
  toast(`Sent again (${again.id})`);
  await showDeliveries(sub);
}

async function showDeliveries(sub) {
  const { data } = await get(webhookPath(sub, "/deliveries?limit=50"));
  const panel = $("#delivery-panel");
  panel.hidden = false;
  fill(panel, h("h3", { id: "deliveries-title" }, `Deliveries to ${sub.url}`),
    h("button", { type: "button", onclick: () => showDeliveries(sub) }, "Refresh"),
    table([
      { label: "Event", value: (d) => d.eventType },
      { label: "Created", value: (d) => timeEl(d.createdAt) },
      { label: "State", value: (d) => badge(d.status, d.status === "delivered" ? "normal" : d.status === "failed" ? "exhausted" : "warning") },
      { label: "Attempts", value: (d) => String(d.attemptCount), num: true },
      { label: "Last answer", value: (d) => (d.lastStatusCode ? `HTTP ${d.lastStatusCode}` : d.lastError || "—") },
      { label: "", value: (d) => h("button", { type: "button", class: "write",
        "aria-label": `Redeliver ${d.id}`, onclick: () => redeliver(sub, d) }, "Redeliver") },
    ], data, { caption: "Delivery history, newest first", empty: "No delivery yet." }));
}

async function loadWebhooks() {
  const { data, eventTypes: types } = await get("/api/v1/webhooks");
  eventTypes = types;
  fill("#webhook-list", table([
    { label: "URL", value: (s) => s.url },
    { label: "Events", value: (s) => (s.events.length ? s.events.join(", ") : "all") },
    { label: "Format", value: (s) => s.format },
    { label: "State", value: (s) => (s.enabled ? badge("enabled", "normal") : badge("disabled", "muted")) },
    { label: "Actions", value: (s) => h("span", { class: "row-actions" },
      h("button", { type: "button", onclick: () => showDeliveries(s) }, "Deliveries"),
      h("button", { type: "button", class: "write", onclick: () => test(s) }, "Send test"),
      h("button", { type: "button", class: "write", onclick: () => rotate(s) }, "Rotate secret"),
      h("button", { type: "button", class: "danger write", onclick: () => remove(s) }, "Remove")) },
  ], data, { caption: "Webhook subscriptions", empty: "No webhook yet." }));
}

async function subscribe(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  if (!requireFields(form, ["url"])) return;
  const events = [...form.querySelectorAll("#wf-events input:checked")].map((c) => c.value);
  const body = { url: $("#wf-url").value.trim(), format: $("#wf-format").value };
  if (events.length) body.events = events;
  const description = $("#wf-description").value.trim();
  if (description) body.description = description;
  try {
    const sub = await api("POST", "/api/v1/webhooks", body);
    form.reset();
    form.hidden = true;
    showSecret(`Signing secret for ${sub.url}`, sub);
    await loadWebhooks();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(form, error);
  }
}

async function loadEvents() {
  const { data } = await get("/api/v1/events?limit=100");
  fill("#event-list", table([
    { label: "Time", value: (e) => timeEl(e.timestamp) },
    { label: "Event", value: (e) => e.type },
    { label: "Budget", value: (e) => (e.payload && (e.payload.budgetName || e.payload.budgetId)) || "—" },
    { label: "Threshold", value: (e) => (e.payload && e.payload.threshold !== undefined ? `${e.payload.threshold} %` : "—"), num: true },
    { label: "Scope", value: (e) => (e.payload && e.payload.scopeId ? `${e.payload.scopeType} ${e.payload.scopeId}` : "—") },
  ], data, { caption: "Recent events, newest first", empty: "No event yet." }));
}

export default async function alerts(session) {
  if (session.readOnly) {
    fill("#webhooks-card", h("h2", {}, "Webhook subscriptions"),
      h("p", { class: "help" }, "Webhook subscriptions need the admin token (their URLs often carry secrets)."));
  } else {
    $("#new-webhook").addEventListener("click", () => {
      const form = $("#webhook-form");
      form.hidden = !form.hidden;
      $("#new-webhook").setAttribute("aria-expanded", String(!form.hidden));
      if (!form.hidden) $("#wf-url").focus();
    });
    $("#wf-cancel").addEventListener("click", () => { $("#webhook-form").hidden = true; });
    $("#webhook-form").addEventListener("submit", subscribe);
    await loadWebhooks();
    fill("#wf-events", eventTypes.map((t) => h("label", { class: "check" }, h("input", { type: "checkbox", value: t }), ` ${t}`)));
  }
  await loadEvents();
}
