// Keys: issue a client key (its secret shown once, with a copy button), list with principal and
// last use (derived from the ledger), revoke.
import { $, ApiError, api, badge, clearErrors, count, fill, get, h, secretBox, showError, table, timeEl,
  toast } from "./ui.js";

const PRINCIPAL = [["organizationId", "org"], ["teamId", "team"], ["projectId", "project"], ["userId", "user"]];

function principal(k) {
  return PRINCIPAL.filter(([f]) => k[f]).map(([f, label]) => `${label} ${k[f]}`).join(" · ") || "—";
}

async function revoke(key) {
  if (!window.confirm(`Revoke the key ${key.name || key.id}? Applications using it stop working at once.`)) return;
  await api("DELETE", `/api/v1/keys/${encodeURIComponent(key.id)}`);
  toast(`Revoked ${key.name || key.id}`);
  await load();
}

async function load() {
  const { data } = await get("/api/v1/keys");
  data.sort((a, b) => Date.parse(b.createdAt || 0) - Date.parse(a.createdAt || 0));
  fill("#key-list", table([
    { label: "Key", value: (k) => h("span", {}, h("code", {}, `${k.prefix}…`), " ", k.name || "") },
    { label: "Id", value: (k) => k.id },
    { label: "Principal", value: principal },
    { label: "Created", value: (k) => timeEl(k.createdAt) },
    { label: "Last use", value: (k) => (k.lastUsedAt ? timeEl(k.lastUsedAt) : "never") },
    { label: "Requests", value: (k) => count(k.requests), num: true },
    { label: "State", value: (k) => (k.active ? badge("active", "normal") : badge("revoked", "exhausted")) },
    { label: "", value: (k) => (k.active ? h("button", { type: "button", class: "danger write",
      "aria-label": `Revoke ${k.name || k.id}`, onclick: () => revoke(k) }, "Revoke") : "") },
  ], data, { caption: "Client keys, newest first", empty: "No key yet." }));
}

async function issue(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const body = {};
  for (const name of ["name", "org", "team", "project", "user"]) {
    const value = form.querySelector(`[data-field="${name}"]`).value.trim();
    if (value) body[name] = value;
  }
  try {
    const key = await api("POST", "/api/v1/keys", body);
    form.reset();
    const panel = $("#new-key");
    panel.hidden = false;
    fill(panel, secretBox(`New key ${key.name || key.id}`, key.key,
      "Shown once: only its hash is stored. Give it to the application as its OpenAI API key."));
    panel.querySelector("input").focus();
    await load();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(form, error);
  }
}

export default async function keys() {
  $("#key-form").addEventListener("submit", issue);
  await load();
}
