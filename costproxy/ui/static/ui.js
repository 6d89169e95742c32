// The console's shared helpers: the /api/v1 client (session cookie + CSRF header), formatting of
// money (exact, from decimal strings), times (in the viewer's zone), tables, charts and forms.

let sessionPromise = null;

export function session() {
  if (!sessionPromise) {
    sessionPromise = fetch("/ui/session", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(async (r) => {
        if (r.status === 401) { toLogin(); throw new Error("not signed in"); }
        return r.json();
      });
  }
  return sessionPromise;
}

function toLogin() {
  location.assign("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
}

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.param = error ? error.param : null;
    this.code = error ? error.code : null;
  }
}

export async function api(method, path, body) {
  const s = await session();
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = s.csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (r.status === 401) { toLogin(); }
  if (!r.ok) throw new ApiError(r.status, data && data.error);
  return data;
}

export const get = (path) => api("GET", path);

// --- formatting -------------------------------------------------------------------------------

const NANOS = 1000000000n;

export function toNanos(text) {
  let s = String(text).trim();
  const negative = s.startsWith("-");
  if (negative) s = s.slice(1);
  const [whole, frac = ""] = s.split(".");
  const n = BigInt(whole || "0") * NANOS + BigInt((frac + "000000000").slice(0, 9));
  return negative ? -n : n;
}

function groupThousands(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// "$1,234.57" from "1234.5678"; amounts under a dollar keep up to 6 decimals ("$0.00015").
export function money(text) {
  if (text === null || text === undefined || text === "") return "—";
  let n = toNanos(text);
  const sign = n < 0n ? "−" : "";
  if (n < 0n) n = -n;
  if (n >= NANOS) {
    const cents = (n + 5000000n) / 10000000n;
    return `${sign}$${groupThousands((cents / 100n).toString())}.${(cents % 100n).toString().padStart(2, "0")}`;
  }
  const micros = (n + 500n) / 1000n;
  let frac = micros.toString().padStart(6, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${sign}$0.${frac}`;
}

export function moneyNumber(text) { return text === null || text === undefined ? 0 : Number(text); }

export function pct(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(1)} %`;
}

export function count(n) { return n === null || n === undefined ? "—" : groupThousands(String(n)); }

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

// An ISO string or epoch milliseconds, in the viewer's zone.
export function when(value) {
  if (value === null || value === undefined || value === "") return "—";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : timeFormat.format(d);
}

export function timeEl(value) {
  const el = h("time", {}, when(value));
  if (value !== null && value !== undefined) {
    const d = new Date(value);
    if (!Number.isNaN(d.getTime())) el.dateTime = d.toISOString();
  }
  return el;
}

// --- DOM ----------------------------------------------------------------------------------------

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function fill(target, ...nodes) {
  const el = typeof target === "string" ? $(target) : target;
  el.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
  return el;
}

// columns: [{label, value: row => text|Node, num?: bool}]
export function table(columns, rows, { caption, empty = "Nothing yet.", foot, rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {}, columns.map((c, i) => {
    const v = c.value(row);
    const cell = h(i === 0 ? "th" : "td", { class: c.num ? "num" : null, scope: i === 0 ? "row" : null,
      "data-label": c.label || null });
    cell.append(v instanceof Node ? v : document.createTextNode(v === null || v === undefined ? "—" : String(v)));
    return cell;
  })));
  const t = h("table", { class: "stack" }, caption ? h("caption", {}, caption) : null, h("thead", {}, head), h("tbody", {}, body));
  if (foot) t.append(h("tfoot", {}, h("tr", {}, columns.map((c, i) => h(i === 0 ? "th" : "td",
    { class: c.num ? "num" : null, scope: i === 0 ? "row" : null, "data-label": i === 0 ? null : c.label || null },
    foot[i] ?? "")))));
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "table" }, t);
}

export function statusBar(percent, status) {
  const shown = Math.max(0, Math.min(100, Number(percent) || 0));
  const bar = h("div", { class: `bar ${status}`, role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": String(shown), "aria-label": `${pct(percent)} used, ${status}` });
  const fillEl = h("span", { class: "fill" });
  fillEl.style.width = `${shown}%`;
  bar.append(fillEl);
  return h("div", { class: "bar-row" }, bar, h("span", { class: `badge ${status}` }, status));
}

export function badge(text, kind = text) { return h("span", { class: `badge ${kind}` }, text); }

export function toast(message, kind = "ok") {
  const el = $("#toast");
  el.className = `show ${kind}`;
  el.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = ""; }, 5000);
}

export function confirmed(message) { return window.confirm(message); }

export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    const input = button.parentElement.querySelector("input, code");
    if (input && input.select) input.select();
    button.textContent = "Select and copy (Ctrl+C)";
  }
}

// A secret shown once, with a copy button.
export function secretBox(title, value, note) {
  const input = h("input", { type: "text", readonly: true, value, "aria-label": title, class: "secret-value" });
  const button = h("button", { type: "button", class: "primary" }, "Copy");
  button.addEventListener("click", () => copy(value, button));
  return h("div", {}, h("h3", {}, title), h("div", { class: "copy-row" }, input, button), h("p", { class: "help" }, note));
}

// --- forms --------------------------------------------------------------------------------------

export function clearErrors(form) {
  for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// Put an API error beside the field its `param` names ("body.amount" → data-field="amount").
export function showError(form, error) {
  const param = String(error.param || "").replace(/^body\.?/, "").replace(/^constraints\./, "");
  const name = param.split(/[.[]/)[0];
  const slot = name && form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
  const target = slot || form.querySelector('[data-error-for="_form"]');
  // beside the field, "body: amount: amount is not …" reads better as "amount is not …"
  target.textContent = slot ? error.message.replace(/^body: /, "").replace(new RegExp(`^${name}: `), "") : error.message;
  const input = name && form.querySelector(`[data-field="${CSS.escape(name)}"]`);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    if (slot && !slot.id) slot.id = `err-${name}-${Math.random().toString(36).slice(2, 7)}`;
    if (slot && input.tagName !== "FIELDSET") input.setAttribute("aria-describedby", slot.id);
    input.focus();
  } else {
    target.focus?.();
  }
}

export function requireFields(form, names) {
  let ok = true;
  for (const name of names) {
    const input = form.querySelector(`[data-field="${name}"]`);
    if (input && !String(input.value).trim()) {
      const slot = form.querySelector(`[data-error-for="${name}"]`);
      if (slot) slot.textContent = "Required.";
      input.setAttribute("aria-invalid", "true");
      if (ok) input.focus();
      ok = false;
    }
  }
  return ok;
}

// --- charts (the vendored Chart.js) ---------------------------------------------------------------

export const PALETTE = ["#1f5fbf", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d",
  "#4d7c0f", "#475569", "#9333ea", "#0369a1", "#6b7280"];

const charts = new Map();

export function chart(canvas, config) {
  if (!window.Chart) {
    canvas.replaceWith(h("p", { class: "error" }, "The chart library did not load; the table below has the figures."));
    return null;
  }
  charts.get(canvas)?.destroy();
  const made = new window.Chart(canvas, {
    ...config,
    options: { responsive: true, maintainAspectRatio: false, animation: false,
      interaction: { mode: "index", intersect: false }, ...config.options },
  });
  charts.set(canvas, made);
  return made;
}

export function moneyTick(value) { return money(Number(value).toFixed(9)); }

export function tooltipMoney(ctx) {
  const raw = typeof ctx.raw === "number" ? ctx.raw.toFixed(9) : String(ctx.raw);
  return `${ctx.dataset.label}: ${money(raw)}`;
}
