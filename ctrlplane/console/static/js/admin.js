// Admin pages (system admins only): tenants, one tenant (plan, quota, suspension, instances),
// stats, providers, and the audit log with its chain verification.
import { get, post, query, request } from "./api.js";
import { instancesTable } from "./tenant.js";
import { action, attempt, badge, confirmAction, field, form, h, meter, replace, table, when } from "./ui.js";

const enc = encodeURIComponent;

export async function tenantsPage(ctx) {
  const page = await get(`/v1/admin/tenants${query({ limit: 100 })}`);
  replace(ctx.main, h("h1", {}, "Tenants"),
    table(["Name", "Slug", "Plan", "Status", "Created"], page.items.map((t) => [
      h("a", { href: `#/admin/tenants/${enc(t.id)}` }, t.name), h("code", {}, t.slug), t.plan,
      h("span", { "data-status": t.status }, badge(t.status)), when(t.created_at),
    ]), "Tenants"),
    h("section", { class: "panel", "aria-labelledby": "new-tenant" }, h("h2", { id: "new-tenant" }, "New tenant"),
      form([
        field("Name", { name: "name", required: true }),
        field("Slug", { name: "slug", required: true }),
        field("Plan", { name: "plan", options: ["free", "pro", "enterprise"] }),
      ], "Create tenant", true, async (v) => {
        const created = await attempt(() => post("/v1/admin/tenants", v));
        if (created) location.hash = `#/admin/tenants/${enc(created.id)}`;
      })));
}

export async function tenantPage(ctx, id) {
  const base = `/v1/admin/tenants/${enc(id)}`;
  const [tenant, quota] = await Promise.all([get(base), get(`${base}/quota`)]);
  const reload = () => tenantPage(ctx, id);
  const limits = quota.limits, usage = quota.usage;
  replace(ctx.main,
    h("p", {}, h("a", { href: "#/admin/tenants" }, "← Tenants")),
    h("h1", {}, tenant.name, " ", h("span", { id: "tenant-status", "data-status": tenant.status }, badge(tenant.status))),
    tenant.suspension_reason ? h("p", {}, `Suspended ${when(tenant.suspended_at)}: ${tenant.suspension_reason}`) : null,
    h("div", { class: "row" },
      tenant.status === "suspended"
        ? action("Unsuspend", true, async () => {
          if (!(await confirmAction(`Unsuspend ${tenant.name}? Its instances start again.`, "Unsuspend"))) return;
          if (await attempt(() => post(`${base}/unsuspend`), "Tenant unsuspended.")) await reload();
        })
        : action("Suspend", true, async () => {
          if (!(await confirmAction(`Suspend ${tenant.name}? Its instances stop and its credentials can change nothing.`, "Suspend"))) return;
          const reason = ctx.main.querySelector("#suspend-reason").value || "suspended from the console";
          if (await attempt(() => post(`${base}/suspend`, { reason }), "Tenant suspended.")) await reload();
        }, { danger: true }),
      tenant.status === "suspended" ? null : h("label", { for: "suspend-reason" }, "Suspension reason", h("input", { id: "suspend-reason", type: "text" }))),
    h("section", { class: "panel", "aria-labelledby": "plan" }, h("h2", { id: "plan" }, "Plan"),
      form([field("Plan", { name: "plan", options: ["free", "pro", "enterprise"], value: tenant.plan })], "Change plan", true,
        async (v) => { if (await attempt(() => request("PATCH", base, { plan: v.plan }), "Plan changed.")) await reload(); })),
    h("section", { class: "panel", "aria-labelledby": "quota" }, h("h2", { id: "quota" }, `Quota (${quota.custom ? "custom" : `plan ${quota.plan}`})`),
      meter("Instances", usage.instances, limits.max_instances),
      meter("CPU", usage.cpu_millis, limits.max_cpu_millis, " m"),
      meter("Memory", usage.memory_mb, limits.max_memory_mb, " MB"),
      meter("Domains", usage.domains, limits.max_domains),
      meter("Routes", usage.routes, limits.max_routes),
      meter("Secrets", usage.secrets, limits.max_secrets),
      h("h3", {}, "Set a custom quota"),
      form(Object.entries(limits).map(([name, value]) => field(name.replace("max_", "").replace("_", " "), { name, type: "number", min: 0, value })),
        "Set quota", true, async (v) => {
          const body = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, Number(x)]));
          if (await attempt(() => request("PUT", `${base}/quota`, body), "Quota set.")) await reload();
        })),
    h("h2", {}, "Instances"), await instancesTable(ctx, id));
}

export async function statsPage(ctx) {
  const stats = await get("/v1/admin/stats");
  const counts = (title, object) => h("section", { class: "panel" }, h("h2", {}, title),
    h("dl", { class: "kv" }, Object.entries(object || {}).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])));
  replace(ctx.main, h("h1", {}, "Stats"),
    counts("Tenants", stats.tenants), counts("Instances", stats.instances),
    counts("API keys", stats.api_keys), counts("Deployments", { "last 24 h": stats.deployments_last_24h }),
    stats.environments ? counts("Environments", stats.environments) : null);
}

export async function providersPage(ctx) {
  const page = await get("/v1/admin/providers");
  replace(ctx.main, h("h1", {}, "Providers"),
    table(["Provider", "Available", "Message"], page.items.map((p) => [
      p.name, badge(p.available ? "healthy" : "unhealthy"), p.message,
    ]), "Providers"));
}

export async function auditPage(ctx, filters = {}) {
  const verification = h("section", { class: "panel", id: "audit-verification", "aria-live": "polite" }, "Verifying the chains…");
  const results = h("div", {});
  const filterForm = form([
    field("Tenant ID", { name: "tenant_id", value: filters.tenant_id || "" }),
    field("Resource", { name: "resource", value: filters.resource || "" }),
    field("Action", { name: "action", value: filters.action || "" }),
    field("Actor", { name: "actor", value: filters.actor || "" }),
    field("Since", { name: "since", placeholder: "2026-01-01T00:00:00Z or 1h", value: filters.since || "" }),
    field("Until", { name: "until", value: filters.until || "" }),
  ], "Filter", true, async (v) => { await load(v, null, true); }, { label: "Audit filters" });
  // Filtering changes nothing: it is not a mutating control.
  filterForm.querySelector("button").removeAttribute("data-mutating");
  replace(ctx.main, h("h1", {}, "Audit log"), verification, filterForm, results);

  const rows = [];
  async function load(v, cursor, fresh) {
    const page = await attempt(() => get(`/v1/admin/audit${query({ ...v, cursor, limit: 50 })}`));
    if (!page) return;
    if (fresh) rows.length = 0;
    rows.push(...page.items);
    replace(results, table(["When", "Tenant", "Actor", "Action", "Resource", "Outcome", "Status"], rows.map((e) => [
      when(e.at), e.tenant_id ? h("code", {}, e.tenant_id) : "system", `${e.actor_kind} ${e.actor_subject}`,
      e.action, `${e.resource}${e.resource_id ? ` ${e.resource_id}` : ""}`, badge(e.outcome), String(e.status_code),
    ]), `Audit entries (${page.total} match)`),
    page.next_cursor ? h("button", { type: "button", class: "secondary", onclick: () => load(v, page.next_cursor, false) }, "Load more") : null);
  }
  await load(filters, null, true);
  const report = await attempt(() => get("/v1/admin/audit/verify"));
  if (report) {
    replace(verification, report.intact
      ? h("p", {}, badge("verified"), ` Every chain is intact: ${report.entries} entries in ${report.chains} chains.`)
      : h("p", {}, badge("failed"), ` Chain ${report.broken.chain} is broken at entry ${report.broken.seq}: ${report.broken.reason}`));
  }
}
