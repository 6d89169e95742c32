// Routing: recent decisions with their explanation (rules fired, candidates and scores, why this
// model, what it saved), savings per rule, and the rule set in force with its validation state.
import { $, PALETTE, badge, chart, count, fill, get, h, money, moneyNumber, moneyTick, pct, table, timeEl,
  toNanos, tooltipMoney } from "./ui.js";

async function explain(summary, button) {
  const [record, ledger] = await Promise.all([get(`/api/v1/decisions/${encodeURIComponent(summary.id)}`),
    get(`/api/v1/requests/${encodeURIComponent(summary.requestId)}`).catch(() => ({ data: [] }))]);
  const d = record.decision;
  const entry = ledger.data[ledger.data.length - 1];
  const panel = $("#explain");
  panel.hidden = false;
  const saved = summary.outcome ? summary.outcome.saving : null;
  fill(panel,
    h("div", { class: "title-row" }, h("h3", { id: "explain-title" }, `Why ${d.model}? Decision ${d.id}`),
      h("button", { type: "button", onclick: () => { panel.hidden = true; button.focus(); } }, "Close")),
    h("dl", { class: "facts" },
      h("dt", {}, "Asked for"), h("dd", {}, record.requestedModel),
      h("dt", {}, "Task"), h("dd", {}, `${d.taskType} (difficulty ${d.difficulty.toFixed(2)}), mode ${d.mode}`),
      h("dt", {}, "Quality target"), h("dd", { class: "num" }, `${d.qualityTarget.toFixed(3)} (expected ${d.expectedQuality.toFixed(3)})`),
      h("dt", {}, "Budget pressure"), h("dd", { class: "num" }, d.pressure.toFixed(2)),
      h("dt", {}, "Served"), h("dd", {}, entry ? `${entry.servedModel} · ${entry.status}` : "not in the ledger (yet)"),
      h("dt", {}, "Cost / baseline"), h("dd", { class: "num" }, entry ? `${money(entry.cost)} / ${money(entry.baseline)}` : "—"),
      h("dt", {}, "Saved"), h("dd", { class: "num good" }, saved === null ? "—" : money(saved)),
      h("dt", {}, "Fallback chain"), h("dd", {}, d.fallbackChain.join(" → ") || "none")),
    h("h4", {}, "Why"), h("ul", {}, d.reasons.map((r) => h("li", {}, r))),
    h("h4", {}, "Rules that fired"),
    record.rulesFired.length ? h("ul", {}, record.rulesFired.map((f) => h("li", {}, `${f.ruleId} (${f.mode}${f.applied ? ", applied" : ", not applied"})`)))
      : h("p", { class: "empty" }, "No rule matched."),
    h("h4", {}, "Candidates and scores"),
    table([
      { label: "Model", value: (s) => (s.model === d.model ? h("strong", {}, `${s.model} ✓`) : s.model) },
      { label: "Tier", value: (s) => s.tier },
      { label: "Expected quality", value: (s) => s.expectedQuality.toFixed(3), num: true },
      { label: "Expected cost (USD)", value: (s) => money(s.expectedCost), num: true },
      { label: "Worst case (USD)", value: (s) => money(s.worstCaseCost), num: true },
      { label: "Eligible", value: (s) => (s.eligible ? "yes" : `no: ${s.reasonExcluded}`) },
    ], [...d.scores].sort((a, b) => (toNanos(a.expectedCost) < toNanos(b.expectedCost) ? -1 : 1)), { caption: "Every candidate the engine scored" }));
  panel.focus();
}

async function loadDecisions() {
  const { data } = await get("/api/v1/decisions?limit=50");
  fill("#decision-list", table([
    { label: "Time", value: (d) => timeEl(d.createdAt) },
    { label: "Asked", value: (d) => d.requestedModel },
    { label: "Chosen", value: (d) => d.model },
    { label: "Task", value: (d) => d.taskType },
    { label: "Rules", value: (d) => d.rulesFired.join(", ") || "—" },
    { label: "Saved (USD)", value: (d) => (d.outcome ? money(d.outcome.saving) : "—"), num: true },
    { label: "", value: (d) => { const b = h("button", { type: "button", "aria-label": `Explain decision ${d.id}` }, "Explain");
      b.addEventListener("click", () => explain(d, b)); return b; } },
  ], data, { caption: "Newest first (the last 10,000 decisions are kept in memory)", empty: "No routing decision yet: send a request with model auto." }));
}

async function loadSavings() {
  const body = await get("/api/v1/analytics/rules?range=30d");
  const rows = [...body.data, { ruleId: "(no rule)", name: "requests no rule touched", inForce: true, ...body.noRule }];
  chart($("#rule-chart"), {
    type: "bar",
    data: { labels: rows.map((r) => r.ruleId), datasets: [{ label: "saving", data: rows.map((r) => moneyNumber(r.saving)),
      backgroundColor: rows.map((_, i) => PALETTE[i % PALETTE.length]) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false }, tooltip: { callbacks: { label: tooltipMoney } } },
      scales: { x: { ticks: { callback: moneyTick } } } },
  });
  fill("#rule-savings", table([
    { label: "Rule", value: (r) => h("span", {}, r.ruleId, r.inForce ? "" : " ", r.inForce ? "" : badge("no longer in force", "muted")) },
    { label: "Requests", value: (r) => count(r.requests), num: true },
    { label: "Spend (USD)", value: (r) => money(r.amount), num: true },
    { label: "Baseline (USD)", value: (r) => money(r.baseline), num: true },
    { label: "Saving (USD)", value: (r) => money(r.saving), num: true },
    { label: "Saving", value: (r) => pct(r.savingPercent), num: true },
  ], rows, { caption: "Requests each applied rule touched (a request two rules touched counts for both)" }));
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function describe(rule) {
  const conditions = rule.conditions.map((c) => `${c.field} ${c.operator}${c.value === null ? "" : ` ${JSON.stringify(c.value)}`}`)
    .join(` ${rule.operator} `) || "every request";
  const actions = rule.actions.map((a) => `${a.type}${Object.keys(a.params).length ? ` ${JSON.stringify(a.params)}` : ""}`).join("; ");
  return `${conditions} → ${actions}`;
}

async function loadRules() {
  const rules = await get("/api/v1/rules");
  const last = rules.lastReload;
  fill("#rule-state", h("p", {}, rules.valid ? badge("valid", "normal") : badge("last reload failed", "exhausted"),
    ` ${plural(rules.rules.length, "rule")} from ${plural(rules.files.length, "file")} in ${rules.directory || "—"}, digest `, h("code", {}, rules.digest || "—"),
    `, loaded `, timeEl(rules.loadedAt), last ? [", last checked ", timeEl(last.at)] : ""),
  last && last.errors.length ? h("div", { class: "errors", role: "alert" }, h("p", {}, "The last reload was refused; the rule set below stays in force:"),
    h("ul", {}, last.errors.map((e) => h("li", {}, h("code", {}, `${e.file}: ${e.ruleId}: ${e.field || "-"}`), ` ${e.message}`)))) : null);
  fill("#rule-list", table([
    { label: "Rule", value: (r) => r.id },
    { label: "Priority", value: (r) => String(r.priority), num: true },
    { label: "State", value: (r) => (!r.enabled ? badge("disabled", "muted") : r.mode === "shadow" ? badge("shadow", "warning") : badge("enforced", "normal")) },
    { label: "Rollout", value: (r) => `${r.rollout} %`, num: true },
    { label: "What it does", value: describe },
    { label: "File", value: (r) => (r.file || "").split("/").pop() },
  ], rules.rules, { caption: "Rules in evaluation order", empty: "No steering rule is loaded." }));
}

export default async function routing() {
  await Promise.all([loadDecisions(), loadSavings(), loadRules()]);
}
