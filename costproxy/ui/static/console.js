// Entry point of every console page: wire the session (sign-out form, read-only mode) and run the
// page's module, named by <body data-page>.
import { $, h, session, toast, viewerZone } from "./ui.js";

const PAGES = new Set(["overview", "budgets", "budget", "alerts", "keys", "reports", "routing"]);

async function main() {
  const page = document.body.dataset.page;
  if (!PAGES.has(page)) return;
  const s = await session();
  for (const field of document.querySelectorAll("[data-csrf-field]")) field.value = s.csrfToken;
  if (s.readOnly) document.body.classList.add("readonly");
  const main = $("#main");
  main.append(h("p", { class: "zone" }, `Times are shown in ${viewerZone}. Money is in US dollars (USD).`));
  const module = await import(`./page-${page}.js`);
  await module.default(s);
}

main().catch((error) => {
  console.error(error);
  toast(`Could not load this page: ${error.message}`, "bad");
});
