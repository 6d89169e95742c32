// One budget: this period's state, history with burn rate and projection, thresholds fired,
// overrides (grant, expiry, revoke), latest usage and change history.
import { $, ApiError, api, badge, chart, clearErrors, count, fill, get, h, money, moneyNumber, moneyTick, pct,
  requireFields, showError, statusBar, table, timeEl, toast, tooltipMoney, when } from "./ui.js";

const id = decodeURIComponent(location.pathname.split("/").pop());
const base = `/api/v1/budgets/${encodeURIComponent(id)}`;

function fact(term, value) { return [h("dt", {}, term), h("dd", { class: "num" }, value)]; }

function drawChart(status, report) {
  const start = Date.parse(status.periodStart || report.timeRange.from || new Date().toISOString());
  const now = Date.now();
  const end = status.periodEnd ? Date.parse(status.periodEnd) : now;
  let total = 0;
  const spent = [{ x: start, y: 0 }];
  for (const row of report.data) {
    total += moneyNumber(row.amount);
    spent.push({ x: Math.min(now, Date.parse(`${row.key}T23:59:59`)), y: total });
  }
  spent.push({ x: now, y: moneyNumber(status.currentAmount) });
  const datasets = [
    { label: "spent", data: spent, borderColor: "#1f5fbf", backgroundColor: "#1f5fbf", stepped: false },
    { label: "limit", data: [{ x: start, y: moneyNumber(status.limit) }, { x: end, y: moneyNumber(status.limit) }],
      borderColor: "#b91c1c", borderDash: [6, 4], pointRadius: 0 },
  ];
  if (status.projectedTotal !== null && status.periodEnd) {
    datasets.push({ label: "projection", data: [{ x: now, y: moneyNumber(status.currentAmount) },
      { x: end, y: moneyNumber(status.projectedTotal) }], borderColor: "#a16207", borderDash: [2, 3], pointRadius: 0 });
  }
  chart($("#b-chart"), {
    type: "line", data: { datasets },
    options: { parsing: true, interaction: { mode: "nearest", intersect: false },
      scales: { x: { type: "linear", min: start, max: end, ticks: { callback: (v) => when(v).split(",")[0], maxTicksLimit: 6 } },
        y: { beginAtZero: true, ticks: { callback: moneyTick } } },
      plugins: { tooltip: { callbacks: { title: (items) => when(items[0].parsed.x), label: tooltipMoney } } } },
  });
  fill("#b-history", table([
    { label: "Day", value: (r) => r.key },
    { label: "Requests", value: (r) => count(r.requests), num: true },
    { label: "Spend (USD)", value: (r) => money(r.amount), num: true },
  ], report.data, { caption: "Spend per day this period", empty: "No spend this period." }));
}

async function loadOverrides() {
  const { data } = await get(`${base}/overrides`);
  fill("#b-overrides", table([
    { label: "Kind", value: (o) => (o.type === "increase" ? `increase ${money(o.amount)}` : "approval") },
    { label: "Reason", value: (o) => o.reason },
    { label: "Granted", value: (o) => timeEl(o.createdAt) },
    { label: "Expires", value: (o) => timeEl(o.expiresAt) },
    { label: "State", value: (o) => (o.active ? badge("active", "normal") : badge(o.revokedAt ? "revoked" : "expired", "muted")) },
    { label: "", value: (o) => (o.active ? h("button", { type: "button", class: "danger write",
      "aria-label": `Revoke override ${o.id}`, onclick: () => revoke(o) }, "Revoke") : "") },
  ], data, { caption: "Overrides", empty: "No override." }));
}

async function revoke(override) {
  if (!window.confirm("Revoke this override now?")) return;
  await api("DELETE", `${base}/overrides/${encodeURIComponent(override.id)}`);
  toast("Override revoked");
  await Promise.all([loadOverrides(), loadStatus()]);
}

async function grant(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  if (!requireFields(form, ["reason", "durationMinutes"])) return;
  const body = { type: $("#of-type").value, reason: $("#of-reason").value.trim() };
  const minutes = $("#of-duration").value.trim();
  body.durationMinutes = /^\d+(\.\d+)?$/.test(minutes) ? Number(minutes) : minutes;
  if (body.type === "increase") body.amount = $("#of-amount").value.trim();
  try {
    await api("POST", `${base}/overrides`, body);
    toast("Override granted");
    form.reset();
    await Promise.all([loadOverrides(), loadStatus()]);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(form, error);
  }
}

async function acknowledge(alert) {
  await api("POST", `${base}/alerts/${alert.threshold}/acknowledge`, { note: "acknowledged in the console" });
  toast(`Threshold ${alert.threshold} % acknowledged`);
  await loadStatus();
}

async function loadStatus() {
  const status = await get(`${base}/status`);
  fill("#b-bar", statusBar(status.percentUsed, status.status));
  fill("#b-facts", [
    fact("Spent", money(status.currentAmount)), fact("Limit", money(status.limit)),
    fact("Remaining", money(status.remaining)), fact("Reserved now", money(status.reserved)),
    fact("Burn rate", `${money(status.burnRate)} / day`), fact("Projected", money(status.projectedTotal)),
    fact("Days left", status.daysRemaining === null ? "—" : String(status.daysRemaining)),
    fact("Period", `${when(status.periodStart)} → ${when(status.periodEnd)}`),
  ].flat());
  fill("#b-alerts", table([
    { label: "Threshold", value: (a) => `${a.threshold} %`, num: true },
    { label: "Fired", value: (a) => timeEl(a.triggeredAt) },
    { label: "Actions", value: (a) => a.actions.map((x) => (typeof x === "string" ? x : x.type)).join(", ") },
    { label: "Acknowledged", value: (a) => (a.acknowledged ? `${a.acknowledgedBy} · ${when(a.acknowledgedAt)}`
      : h("button", { type: "button", class: "write", onclick: () => acknowledge(a) }, "Acknowledge")) },
  ], status.activeAlerts, { caption: "Thresholds fired", empty: "No threshold fired this period." }));
  return status;
}

export default async function budget() {
  const spec = await get(base);
  fill("#b-title", spec.name || spec.id);
  document.title = `${spec.name || spec.id} · costproxy`;
  fill("#b-sub", `${spec.scopeType} ${spec.scopeId} · ${spec.period} (${spec.timezone}) · ${money(spec.amount)} · ` +
    `when exhausted: ${spec.onExhausted}${spec.readOnly ? " · defined in the config file" : ""}`);
  const edit = $("#b-edit");
  if (spec.readOnly) edit.remove(); else edit.href = `/ui/budgets?edit=${encodeURIComponent(spec.id)}`;
  $("#override-form").addEventListener("submit", grant);
  const [status, report] = await Promise.all([loadStatus(), get(`${base}/reports?groupBy=day&timeRange=current`), loadOverrides()]);
  drawChart(status, report);
  const usage = await get(`${base}/usage?limit=20`);
  fill("#b-usage", table([
    { label: "Time", value: (u) => timeEl(u.timestamp) },
    { label: "Source", value: (u) => u.source },
    { label: "Model", value: (u) => u.metadata.modelId },
    { label: "User", value: (u) => u.metadata.userId },
    { label: "Amount (USD)", value: (u) => money(u.amount), num: true },
  ], usage.data, { caption: "Latest usage charged to this budget", empty: "Nothing charged yet." }));
  const audit = await get(`${base}/audit?limit=20`);
  fill("#b-audit", table([
    { label: "When", value: (a) => timeEl(a.at || a.timestamp || a.createdAt) },
    { label: "Who", value: (a) => a.actor || a.by || "—" },
    { label: "What", value: (a) => a.action || a.type || "change" },
  ], audit.data, { caption: "Changes to this budget", empty: "No change recorded." }));
}
