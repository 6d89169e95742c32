// Overview: spend today and this month, saving, forecast, refusals, budgets at risk, recent
// alerts and where auto traffic went. One call: GET /api/v1/analytics/overview.
import { PALETTE, chart, count, fill, get, h, money, pct, statusBar, table, timeEl, viewerZone } from "./ui.js";

function alertText(event) {
  const p = event.payload || {};
  const name = p.budgetName || p.budgetId || "budget";
  if (event.type === "budget.threshold_crossed") return `${name} crossed ${p.threshold} %`;
  if (event.type === "budget.exhausted") return `${name} is exhausted`;
  if (event.type === "budget.status_changed") return `${name} is now ${p.status || p.newStatus || "changed"}`;
  return `${event.type} · ${name}`;
}

export default async function overview() {
  const data = await get(`/api/v1/analytics/overview?tz=${encodeURIComponent(viewerZone)}`);
  const { today, period } = data;
  fill("#ov-period", `${period.label} so far, ${viewerZone}`);
  fill("#kpi-today", money(today.amount));
  fill("#kpi-today-note", `${count(today.requests)} requests`);
  fill("#kpi-period", money(period.amount));
  fill("#kpi-period-note", `${count(period.requests)} requests`);
  fill("#kpi-saving", `${money(period.saving)}`);
  fill("#kpi-saving-note", `${pct(period.savingPercent)} of the baseline ${money(period.baseline)}`);
  fill("#kpi-forecast", money(period.forecast));
  fill("#kpi-forecast-note", "at the last 7 days' pace");
  fill("#kpi-refused", count(today.refused));
  fill("#kpi-refused-note", `today; ${count(period.refused)} this month`);
  fill("#ov-risk", data.budgetsAtRisk.length ? h("ul", { class: "risk" }, data.budgetsAtRisk.map((b) => h("li", {},
    h("a", { href: `/ui/budgets/${encodeURIComponent(b.budgetId)}` }, b.name || b.budgetId),
    h("span", { class: "muted" }, ` ${money(b.currentAmount)} of ${money(b.limit)}`),
    statusBar(b.percentUsed, b.status)))) : h("p", { class: "empty" }, "No budget is past a threshold."));
  fill("#ov-alerts", data.recentAlerts.length ? h("ul", { class: "events" }, data.recentAlerts.map((e) => h("li", {},
    timeEl(e.timestamp), " ", alertText(e)))) : h("p", { class: "empty" }, "No alert yet."));
  const share = data.autoShare;
  chart(document.getElementById("ov-auto-chart"), {
    type: "bar",
    data: { labels: share.map((s) => s.model),
      datasets: [{ label: "share of auto requests (%)", data: share.map((s) => s.percent),
        backgroundColor: share.map((_, i) => PALETTE[i % PALETTE.length]) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false },
      tooltip: { callbacks: { label: (c) => `${share[c.dataIndex].model}: ${pct(c.raw)} · ${count(share[c.dataIndex].requests)} requests` } } },
      scales: { x: { min: 0, max: 100, ticks: { callback: (v) => `${v} %` } } } },
  });
  fill("#ov-auto-table", table([
    { label: "Model", value: (s) => s.model },
    { label: "Requests", value: (s) => count(s.requests), num: true },
    { label: "Share", value: (s) => pct(s.percent), num: true },
    { label: "Spend (USD)", value: (s) => money(s.amount), num: true },
  ], share, { caption: "Auto requests per model this month", empty: "No auto request this month." }));
}
