// Budgets: every budget with its status bar; create and edit (errors beside the wrong field).
import { $, ApiError, api, badge, clearErrors, fill, get, h, money, pct, requireFields, showError, statusBar,
  table, toast } from "./ui.js";

const ACTIONS = [["notify", "notify"], ["auto-downgrade", "auto-downgrade"], ["require-approval", "require approval"],
  ["block-all", "block all"], ["restrict-models", "restrict to economy/standard"]];
const DEFAULT_THRESHOLDS = [{ threshold: 50, actions: ["notify"] }, { threshold: 80, actions: ["notify"] },
  { threshold: 100, actions: ["notify", "block-all"] }];

let editing = null;

function thresholdRow(alert, index) {
  const id = `th-${index}-${Math.random().toString(36).slice(2, 6)}`;
  const kinds = new Set((alert.actions || []).map((a) => (typeof a === "string" ? a : a.type)));
  const row = h("div", { class: "threshold", role: "group", "aria-label": `Threshold ${index + 1}` },
    h("label", { for: id }, "At (%)"),
    h("input", { id, class: "th-percent", inputmode: "numeric", value: String(alert.threshold ?? ""), size: "4" }),
    h("span", { class: "checks" }, ACTIONS.map(([value, label]) => h("label", { class: "check" },
      h("input", { type: "checkbox", value, checked: kinds.has(value) }), ` ${label}`))),
    h("button", { type: "button", class: "link", "aria-label": `Remove threshold ${index + 1}`,
      onclick: () => { row.remove(); } }, "Remove"));
  return row;
}

function setThresholds(alerts) {
  fill("#bf-thresholds", alerts.map(thresholdRow));
}

function readThresholds() {
  return [...document.querySelectorAll("#bf-thresholds .threshold")].map((row) => {
    const text = row.querySelector(".th-percent").value.trim();
    const actions = [...row.querySelectorAll("input[type=checkbox]:checked")].map((c) => (c.value === "restrict-models"
      ? { type: "restrict-models", tiers: ["economy", "standard"] } : c.value));
    return { threshold: /^\d+$/.test(text) ? Number(text) : text, actions };
  });
}

function openForm(budget) {
  editing = budget;
  const form = $("#budget-form");
  clearErrors(form);
  form.reset();
  $("#budget-form-card").hidden = false;
  $("#new-budget").setAttribute("aria-expanded", "true");
  fill("#budget-form-title", budget ? `Edit ${budget.name || budget.id}` : "New budget");
  fill("#bf-submit", budget ? "Save changes" : "Create budget");
  for (const name of ["name", "scopeType", "scopeId", "amount", "period", "timezone", "onExhausted", "description"]) {
    const input = form.querySelector(`[data-field="${name}"]`);
    if (budget && budget[name] !== undefined && budget[name] !== null) input.value = budget[name];
  }
  if (!budget) form.querySelector('[data-field="timezone"]').value = Intl.DateTimeFormat().resolvedOptions().timeZone;
  for (const name of ["scopeType", "scopeId"]) form.querySelector(`[data-field="${name}"]`).disabled = !!budget;
  setThresholds(budget ? budget.alerts : DEFAULT_THRESHOLDS);
  $("#bf-name").focus();
}

function closeForm() {
  $("#budget-form-card").hidden = true;
  $("#new-budget").setAttribute("aria-expanded", "false");
  editing = null;
}

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  if (!requireFields(form, ["name", "scopeId", "amount"])) return;
  const body = { alerts: readThresholds() };
  for (const name of ["name", "amount", "period", "timezone", "onExhausted", "description"]) {
    const value = form.querySelector(`[data-field="${name}"]`).value.trim();
    if (value !== "" || name === "description") body[name] = value;
  }
  if (!editing) {
    body.scopeType = $("#bf-scopeType").value;
    body.scopeId = $("#bf-scopeId").value.trim();
  }
  try {
    const saved = editing
      ? await api("PATCH", `/api/v1/budgets/${encodeURIComponent(editing.id)}`, body)
      : await api("POST", "/api/v1/budgets", body);
    toast(editing ? `Saved ${saved.name || saved.id}` : `Created ${saved.name || saved.id}`);
    closeForm();
    await load();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(form, error);
  }
}

async function remove(budget) {
  if (!window.confirm(`Delete the budget ${budget.name || budget.id}? Its history stays in the ledger.`)) return;
  await api("DELETE", `/api/v1/budgets/${encodeURIComponent(budget.id)}`);
  toast(`Deleted ${budget.name || budget.id}`);
  await load();
}

async function load() {
  const { data } = await get("/api/v1/budgets?withStatus=true");
  fill("#budget-list", table([
    { label: "Budget", value: (b) => h("a", { href: `/ui/budgets/${encodeURIComponent(b.id)}` }, b.name || b.id) },
    { label: "Scope", value: (b) => `${b.scopeType} ${b.scopeId}` },
    { label: "Period", value: (b) => b.period },
    { label: "Spent (USD)", value: (b) => money(b.status.currentAmount), num: true },
    { label: "Limit (USD)", value: (b) => money(b.status.limit), num: true },
    { label: "Used", value: (b) => pct(b.status.percentUsed), num: true },
    { label: "State", value: (b) => statusBar(b.status.percentUsed, b.status.status) },
    { label: "Actions", value: (b) => (b.readOnly ? badge("from config", "muted")
      : h("span", { class: "row-actions write" },
        h("button", { type: "button", onclick: () => openForm(b), "aria-label": `Edit ${b.name || b.id}` }, "Edit"),
        h("button", { type: "button", class: "danger", onclick: () => remove(b), "aria-label": `Delete ${b.name || b.id}` }, "Delete"))) },
  ], data, { caption: "Budgets and their state this period", empty: "No budget yet." }));
  return data;
}

export default async function budgets(session) {
  const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [];
  fill("#tz-list", ["UTC", ...zones].map((z) => h("option", { value: z })));
  $("#new-budget").addEventListener("click", () => openForm(null));
  $("#bf-cancel").addEventListener("click", closeForm);
  $("#bf-add-threshold").addEventListener("click", () => {
    const rows = document.querySelectorAll("#bf-thresholds .threshold").length;
    $("#bf-thresholds").append(thresholdRow({ threshold: "", actions: ["notify"] }, rows));
  });
  $("#budget-form").addEventListener("submit", submit);
  const data = await load();
  const wanted = new URLSearchParams(location.search).get("edit");
  const target = wanted && data.find((b) => b.id === wanted);
  if (target && !session.readOnly && !target.readOnly) openForm(target);
}
