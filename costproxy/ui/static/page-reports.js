// Cost reports: spend by team, user, project, key, model or provider over time (stacked bars with
// hover values), the table under each chart, drill-down from a team to its keys and models, and a
// CSV export of exactly the table shown (the same /api/v1 call with format=csv).
import { $, PALETTE, chart, count, fill, get, h, money, moneyNumber, moneyTick, pct, table, tooltipMoney,
  viewerZone } from "./ui.js";

const DRILL = { team: ["key", "model"] };

function state() {
  const q = new URLSearchParams(location.search);
  return { groupBy: q.get("groupBy") || "team", range: q.get("range") || "7d", bucket: q.get("bucket") || "auto",
    team: q.get("team") };
}

function go(next) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(next)) if (v) q.set(k, v);
  history.pushState(null, "", `/ui/reports?${q}`);
  render();
}

function apiQuery(s, groupBy) {
  const q = new URLSearchParams({ groupBy, range: s.range, bucket: s.bucket, tz: viewerZone });
  if (s.team) q.set("team", s.team);
  return `/api/v1/analytics/spend?${q}`;
}

function bucketLabel(label, bucket) {
  if (bucket !== "hour") return label;
  const [day, time] = label.split("T");
  return `${day.slice(5)} ${time}`;
}

function panel(s, groupBy, data) {
  const id = `chart-${groupBy}`;
  const title = s.team ? `${groupBy === "key" ? "Keys" : "Models"} of team ${s.team}` : `Spend by ${groupBy}`;
  const canvas = h("canvas", { id, role: "img", "aria-label": `${title}, per ${data.bucket}; the table below has the figures` });
  const csv = `${apiQuery(s, groupBy)}&format=csv`;
  const drill = !s.team && DRILL[groupBy];
  const columns = [
    { label: groupBy, value: (r) => (drill && r.key !== null ? h("a", { href: "#", onclick: (e) => { e.preventDefault(); go({ ...s, team: r.key }); },
      "aria-label": `Keys and models of ${groupBy} ${r.label}` }, r.label) : r.label) },
    { label: "Requests", value: (r) => count(r.requests), num: true },
    { label: "Spend (USD)", value: (r) => money(r.amount), num: true },
    { label: "Baseline (USD)", value: (r) => money(r.baseline), num: true },
    { label: "Saving (USD)", value: (r) => money(r.saving), num: true },
    { label: "Saving", value: (r) => pct(r.savingPercent), num: true },
    { label: "Share", value: (r) => pct(r.percent), num: true },
  ];
  const t = data.totals;
  const section = h("section", { class: "card report", "aria-labelledby": `${id}-title` },
    h("div", { class: "title-row" }, h("h2", { id: `${id}-title` }, title),
      h("a", { class: "button", href: csv, download: "", "data-csv": groupBy }, "Export CSV")),
    h("p", { class: "sub" }, `${money(t.amount)} over ${count(t.requests)} requests · saved ${money(t.saving)} (${pct(t.savingPercent)}) · per ${data.bucket}`),
    h("div", { class: "chart" }, canvas),
    table(columns, data.rows, { caption: `${title}: totals for the range`, empty: "No spend in this range.",
      foot: ["Total", count(t.requests), money(t.amount), money(t.baseline), money(t.saving), pct(t.savingPercent), "100.0 %"] }));
  return { section, draw: () => chart(canvas, {
    type: "bar",
    data: { labels: data.labels.map((l) => bucketLabel(l, data.bucket)),
      datasets: data.series.map((series, i) => ({ label: series.label, data: series.amounts.map(moneyNumber),
        backgroundColor: PALETTE[i % PALETTE.length], stack: "spend" })) },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { callback: moneyTick } } },
      plugins: { tooltip: { callbacks: { label: tooltipMoney } } } },
  }) };
}

async function render() {
  const s = state();
  $("#rc-group").value = s.groupBy;
  $("#rc-range").value = s.range;
  $("#rc-bucket").value = s.bucket;
  $("#rc-group").disabled = !!s.team;
  fill("#drill", s.team ? [h("a", { href: "#", onclick: (e) => { e.preventDefault(); go({ ...s, team: null, groupBy: "team" }); } }, "All teams"),
    " / ", h("span", { "aria-current": "page" }, `team ${s.team}`)] : []);
  const groups = s.team ? DRILL.team : [s.groupBy];
  const bodies = await Promise.all(groups.map((g) => get(apiQuery(s, g))));
  const panels = groups.map((g, i) => panel(s, g, bodies[i]));
  fill("#panels", panels.map((p) => p.section));
  for (const p of panels) p.draw();
}

export default async function reports() {
  const controls = $("#report-controls");
  controls.addEventListener("change", () => {
    const s = state();
    go({ ...s, groupBy: $("#rc-group").value, range: $("#rc-range").value, bucket: $("#rc-bucket").value });
  });
  controls.addEventListener("submit", (e) => e.preventDefault());
  window.addEventListener("popstate", render);
  await render();
}
