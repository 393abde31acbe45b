// The console's shell: sign-in, navigation by role, and a hash router over the pages.
import { credential, get } from "./api.js";
import { auditPage, providersPage, statsPage, tenantPage, tenantsPage } from "./admin.js";
import { instancePage, instancesPage, keysPage } from "./tenant.js";
import { clearNotice, field, h, replace, showError } from "./ui.js";

const main = document.getElementById("main");
let me = null;
let leaving = [];
let shown = 0; // which navigation the page on screen belongs to

// A page's streams and timers, stopped when the user navigates away (at once if already gone).
function onLeave(generation, handle) {
  const stop = typeof handle === "function" ? handle : () => handle.abort();
  if (generation === shown) leaving.push(stop);
  else stop();
}

function signIn(message) {
  me = null;
  shown++; // whatever page was loading or open is gone
  for (const stop of leaving) stop();
  leaving = [];
  replace(document.getElementById("nav"));
  replace(document.getElementById("who"));
  const input = field("API key or token", { name: "credential", type: "password", required: true, autocomplete: "off" });
  const element = h("form", { class: "signin", "aria-label": "Sign in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key (cpk_…) or a token. It is kept in this browser tab only, and sent to this server's /v1 API."),
    message ? h("p", { role: "alert" }, message) : null,
    input, h("p", {}, h("button", { type: "submit" }, "Sign in")));
  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    credential.set(input.querySelector("input").value.trim());
    await start();
  });
  replace(main, element);
  input.querySelector("input").focus();
}

function navigation() {
  const links = [];
  if (me.tenant_id) links.push(["#/instances", "Instances"]);
  if (me.tenant_id && me.can_admin) links.push(["#/keys", "API keys"]); // listing keys needs the admin role
  if (me.system_admin) {
    links.push(["#/admin/tenants", "Tenants"], ["#/admin/stats", "Stats"], ["#/admin/providers", "Providers"], ["#/admin/audit", "Audit log"]);
  }
  const current = location.hash.split("/").slice(0, 3).join("/");
  replace(document.getElementById("nav"), h("ul", {}, links.map(([href, text]) =>
    h("li", {}, h("a", { href, "aria-current": current.startsWith(href) ? "page" : null }, text)))));
  const role = me.can_admin ? "admin" : me.can_deploy ? "deploy" : "read";
  replace(document.getElementById("who"),
    h("span", {}, `${me.subject} (${me.system_admin ? "system admin" : role})`),
    h("button", { type: "button", onclick: () => { credential.clear(); signIn(); } }, "Sign out"));
}

async function route() {
  const generation = ++shown;
  for (const stop of leaving) stop();
  leaving = [];
  clearNotice();
  delete main.dataset.ready;
  if (!me) return;
  navigation();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  // Each navigation renders into a view of its own, on screen until the next navigation replaces
  // it: a page still loading when the user moves on (its requests in flight) then fills a view
  // nobody sees instead of overwriting the page the user went to.
  const view = h("div", { class: "view" });
  replace(main, view);
  const current = () => generation === shown;
  const ctx = { main: view, me, onLeave: (handle) => onLeave(generation, handle),
    canDeploy: Boolean(me.can_deploy && me.tenant_id), canAdmin: Boolean(me.can_admin && me.tenant_id) };
  try {
    if (parts[0] === "instances" && parts[1]) await instancePage(ctx, parts[1], parts[2]);
    else if (parts[0] === "instances") await instancesPage(ctx);
    else if (parts[0] === "keys") await keysPage(ctx);
    else if (parts[0] === "admin" && parts[1] === "tenants" && parts[2]) await tenantPage(ctx, parts[2]);
    else if (parts[0] === "admin" && parts[1] === "tenants") await tenantsPage(ctx);
    else if (parts[0] === "admin" && parts[1] === "stats") await statsPage(ctx);
    else if (parts[0] === "admin" && parts[1] === "providers") await providersPage(ctx);
    else if (parts[0] === "admin" && parts[1] === "audit") await auditPage(ctx);
    else { location.replace(me.tenant_id ? "#/instances" : "#/admin/tenants"); return; }
    if (!current()) return;
    document.title = `${main.querySelector("h1")?.textContent || "ctrlplane"} · ctrlplane console`;
    main.dataset.ready = location.hash; // the page has loaded what it shows (tests wait for this)
  } catch (error) {
    if (!current()) return;
    if (error.status === 401) { credential.clear(); signIn(error.describe()); return; }
    replace(view, h("h1", {}, "Could not load this page"));
    showError(error);
  }
}

async function start() {
  if (!credential.get()) { signIn(); return; }
  try {
    me = await get("/v1/keys/self");
  } catch (error) {
    credential.clear();
    signIn(error.describe ? error.describe() : String(error));
    return;
  }
  await route();
}

window.addEventListener("hashchange", () => { route().then(() => main.focus({ preventScroll: true })); });
start();
