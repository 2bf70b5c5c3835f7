// The Real Staging web app: projects, uploads, live staging status, downloads and billing.
// Plain modules, no build step; everything goes through the gateway's public API.

const view = document.getElementById("view");
const state = {
  token: sessionStorage.getItem("rs-token"), catalog: null, me: null, stream: null, notice: null,
};

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `Request failed (${status})`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", json, form, auth = true } = {}) {
  const headers = {};
  if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const resp = await fetch(path, { method, headers, body });
  if (resp.status === 204) return null;
  const data = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (resp.status === 401 && auth) {
    signOut();
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function template(id) {
  delete view.dataset.ready;
  view.replaceChildren(document.getElementById(id).content.cloneNode(true));
}

function signOut() {
  state.token = null;
  sessionStorage.removeItem("rs-token");
  closeStream();
  location.hash = "#/signin";
}

async function refreshAccount() {
  const account = document.getElementById("account");
  if (!state.token) {
    account.hidden = true;
    return;
  }
  state.me = await api("/v1/me");
  account.hidden = false;
  const usage = state.me.usage;
  document.getElementById("usage").textContent = usage
    ? `${state.me.email || "Signed in"} · ${usage.plan} plan · ${usage.used} of ${usage.limit} photos this period`
    : state.me.email || "Signed in";
  document.getElementById("upgrade").hidden = !usage || usage.plan !== "free";
}

async function loadCatalog() {
  if (!state.catalog) state.catalog = await api("/v1/catalog", { auth: false });
  return state.catalog;
}

// Sign-in: Auth0 (authorization code with PKCE) in production, the development issuer when
// the server is its own, or a pasted access token.
async function showSignIn() {
  template("signin-tpl");
  const error = document.getElementById("signin-error");
  const config = await api("/v1/auth/config", { auth: false });
  const devAvailable = config.mode === "development";
  for (const node of view.querySelectorAll("[data-dev]")) node.hidden = !devAvailable;
  const auth0 = document.getElementById("auth0-signin");
  if (config.mode === "auth0" && config.client_id) {
    auth0.hidden = false;
    auth0.addEventListener("click", () => startAuth0(config));
  }
  document.getElementById("dev-signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const email = new FormData(event.target).get("email");
    try {
      const token = await api("/v1/dev/token", {
        method: "POST", json: { sub: `dev|${email}`, email }, auth: false,
      });
      useToken(token.access_token);
    } catch (err) {
      error.textContent = err.message;
    }
  });
  document.getElementById("token-signin").addEventListener("submit", (event) => {
    event.preventDefault();
    useToken(String(new FormData(event.target).get("token")).trim());
  });
}

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function startAuth0(config) {
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const stateValue = base64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem("rs-pkce", JSON.stringify({ verifier, state: stateValue }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: config.client_id,
    redirect_uri: `${location.origin}/`,
    audience: config.audience,
    scope: "openid profile email",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state: stateValue,
  });
  location.assign(`https://${config.domain}/authorize?${params}`);
}

// Back from Auth0 with ?code=...&state=...: trade the code for an access token.
async function finishAuth0() {
  const query = new URLSearchParams(location.search);
  const code = query.get("code");
  const saved = JSON.parse(sessionStorage.getItem("rs-pkce") || "null");
  if (!code || !saved) return;
  sessionStorage.removeItem("rs-pkce");
  history.replaceState(null, "", "/");
  if (query.get("state") !== saved.state) return;
  const config = await api("/v1/auth/config", { auth: false });
  const resp = await fetch(`https://${config.domain}/oauth/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      grant_type: "authorization_code",
      client_id: config.client_id,
      code_verifier: saved.verifier,
      code,
      redirect_uri: `${location.origin}/`,
    }),
  });
  if (resp.ok) useToken((await resp.json()).access_token);
}

function useToken(token) {
  state.token = token;
  sessionStorage.setItem("rs-token", token);
  location.hash = "#/";
}

// Projects
async function showProjects() {
  template("projects-tpl");
  const list = document.getElementById("project-list");
  const more = document.getElementById("more-projects");
  let cursor = null;
  async function page() {
    const data = await api(`/v1/projects?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    for (const project of data.items) {
      list.append(el("li", {}, el("a", { href: `#/projects/${project.id}` },
        el("span", {}, project.name),
        el("span", { class: "muted" }, new Date(project.created_at).toLocaleDateString()))));
    }
    if (!list.children.length) list.append(el("li", { class: "muted" }, "No projects yet."));
    cursor = data.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", page);
  document.getElementById("new-project").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = new FormData(event.target).get("name");
    const project = await api("/v1/projects", { method: "POST", json: { name } });
    location.hash = `#/projects/${project.id}`;
  });
  await page();
}

// One project: upload, stage, watch and download.
async function showProject(projectId) {
  template("project-tpl");
  const catalog = await loadCatalog();
  const project = await api(`/v1/projects/${projectId}`);
  document.getElementById("project-name").textContent = project.name;
  fillSelect(document.getElementById("room-type"), catalog.room_types);
  fillSelect(document.getElementById("style"), catalog.styles);
  const error = document.getElementById("project-error");
  const gallery = document.getElementById("gallery");
  const tiles = new Map();

  document.getElementById("zip").addEventListener("click", async (event) => {
    event.preventDefault();
    await downloadZip(projectId, project.name).catch((err) => (error.textContent = err.message));
  });
  document.getElementById("delete-project").addEventListener("click", async () => {
    if (!confirm(`Delete “${project.name}” and all its photos?`)) return;
    await api(`/v1/projects/${projectId}`, { method: "DELETE" });
    location.hash = "#/";
  });

  setupUpload(projectId, renderTile, error);
  const images = await api(`/v1/projects/${projectId}/images?limit=100`);
  for (const image of images.items) renderTile(image);

  function renderTile(image) {
    let tile = tiles.get(image.id);
    if (!tile) {
      tile = el("article", { class: "tile" });
      tiles.set(image.id, tile);
      gallery.prepend(tile);
    }
    const compare = el("div", { class: "compare" });
    const status = el("span", { class: `status ${image.status}` }, image.status);
    const tools = el("div", { class: "tools" });
    const parts = [
      compare,
      el("div", { class: "meta" }, status,
        el("span", { class: "muted" }, `${label(catalog.room_types, image.room_type)} · ${label(catalog.styles, image.style)}`)),
    ];
    if (image.error) parts.push(el("p", { class: "reason" }, image.error));
    // `charge` is the current attempt's: a released reservation means we failed, so no charge.
    if (image.charge === "released") {
      parts[1].append(el("span", { class: "charge" }, "Not charged"));
    }
    tile.replaceChildren(...parts, tools);
    fillCompare(compare, image);
    if (image.has_staged) {
      tools.append(el("button", { class: "link", onclick: () => download(image.id, "staged") }, "Download"));
    }
    if (image.status === "ready" || image.status === "error") {
      tools.append(el("button", { class: "link", onclick: () => restage(image) }, "Restage"));
    }
    tools.append(el("button", { class: "link", onclick: () => remove(image) }, "Delete"));
  }

  async function fillCompare(compare, image) {
    const original = await api(`/v1/images/${image.id}/download?kind=original`);
    compare.append(el("img", { src: original.url, alt: "Original photo", loading: "lazy" }));
    if (!image.has_staged) return;
    const staged = await api(`/v1/images/${image.id}/download?kind=staged`);
    compare.append(el("img", { class: "after", src: staged.url, alt: "Staged photo", loading: "lazy" }));
    const slider = el("input", { type: "range", min: 0, max: 100, value: 50, "aria-label": "Before and after" });
    slider.addEventListener("input", () => compare.style.setProperty("--split", `${slider.value}%`));
    compare.append(slider);
  }

  async function refreshImage(imageId) {
    try {
      renderTile(await api(`/v1/images/${imageId}`));
      refreshAccount();
    } catch (err) {
      if (err.status === 404) tiles.get(imageId)?.remove();
    }
  }

  async function restage(image) {
    const style = document.getElementById("style").value;
    const room_type = document.getElementById("room-type").value;
    try {
      renderTile(await api(`/v1/images/${image.id}/restage`, { method: "POST", json: { style, room_type } }));
      refreshAccount();
    } catch (err) {
      error.textContent = err.message;
    }
  }

  async function remove(image) {
    await api(`/v1/images/${image.id}`, { method: "DELETE" });
    tiles.get(image.id)?.remove();
    tiles.delete(image.id);
  }

  openStream((change) => {
    if (tiles.has(change.image_id)) refreshImage(change.image_id);
  });
  view.dataset.ready = "project";
}

function setupUpload(projectId, renderTile, error) {
  const input = document.getElementById("files");
  const drop = document.getElementById("drop");
  const button = document.getElementById("stage-button");
  const pending = document.getElementById("pending");
  let files = [];
  function choose(list) {
    files = [...list];
    pending.replaceChildren(...files.map((f) => el("li", {}, `${f.name} · ${(f.size / 1048576).toFixed(1)} MB`)));
    button.disabled = files.length === 0;
  }
  input.addEventListener("change", () => choose(input.files));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files);
  });
  document.getElementById("upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    const room_type = document.getElementById("room-type").value;
    const style = document.getElementById("style").value;
    try {
      const rows = [...pending.children];
      const keys = await Promise.all(files.map((file, i) => uploadFile(file, rows[i])));
      const items = keys.map((key, i) => ({ key, room_type, style, filename: files[i].name }));
      const created = await api(`/v1/projects/${projectId}/images/batch`, { method: "POST", json: { images: items } });
      for (const image of created.items) renderTile(image);
      choose([]);
      refreshAccount();
    } catch (err) {
      const details = Array.isArray(err.body?.details) ? err.body.details.map((d) => d.message).join("; ") : "";
      error.textContent = details ? `${err.message} ${details}` : err.message;
      button.disabled = false;
    }
  });
}

// Photos go through the gateway (same origin, so no storage CORS setup is needed); API
// clients that prefer direct uploads use /v1/uploads/presign instead.
async function uploadFile(file, row) {
  const body = new FormData();
  body.append("file", file, file.name);
  const result = await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/uploads");
    xhr.setRequestHeader("Authorization", `Bearer ${state.token}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (row && e.lengthComputable) row.textContent = `${file.name} · ${Math.round((100 * e.loaded) / e.total)}%`;
    };
    xhr.onload = () => (xhr.status < 300
      ? resolve(xhr.response)
      : reject(new ApiError(xhr.status, xhr.response || { message: `Upload of ${file.name} failed (${xhr.status})` })));
    xhr.onerror = () => reject(new Error(`Upload of ${file.name} failed`));
    xhr.send(body);
  });
  if (row) row.textContent = `${file.name} · uploaded`;
  return result.key;
}

async function download(imageId, kind) {
  const link = await api(`/v1/images/${imageId}/download?kind=${kind}`);
  const a = el("a", { href: link.url, download: link.filename });
  document.body.append(a);
  a.click();
  a.remove();
}

async function downloadZip(projectId, name) {
  const resp = await fetch(`/v1/projects/${projectId}/download.zip`, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  const url = URL.createObjectURL(await resp.blob());
  const a = el("a", { href: url, download: `${name}-staged.zip` });
  document.body.append(a);
  a.click();
  a.remove();
  URL.revokeObjectURL(url);
}

// Live status: server-sent events authenticated by a short-lived ticket; reconnects resume
// from the last event id. Falls back to polling the gallery if the stream is unavailable.
function openStream(onChange) {
  closeStream();
  let lastId = null;
  let stopped = false;
  let timer = null;
  async function connect() {
    if (stopped) return;
    try {
      const { ticket } = await api("/v1/events/ticket", { method: "POST" });
      const source = new EventSource(`/v1/events?ticket=${encodeURIComponent(ticket)}${lastId ? `&last_event_id=${lastId}` : ""}`);
      state.stream = { close: () => { stopped = true; source.close(); clearTimeout(timer); } };
      source.addEventListener("image.status", (event) => {
        lastId = event.lastEventId || lastId;
        onChange(JSON.parse(event.data));
      });
      source.onerror = () => {
        source.close();
        timer = setTimeout(connect, 2000);
      };
    } catch {
      timer = setTimeout(connect, 5000);
    }
  }
  connect();
  state.stream = { close: () => { stopped = true; clearTimeout(timer); } };
}

function closeStream() {
  state.stream?.close();
  state.stream = null;
}

function fillSelect(select, entries) {
  select.replaceChildren(...entries.map((e) => el("option", { value: e.value }, e.label)));
}

function label(entries, value) {
  return entries.find((e) => e.value === value)?.label || value || "";
}

// Billing: plan and status, this period's usage, upgrade (Stripe Checkout), the billing portal
// and invoices. Stripe sends the browser back to /billing?checkout=...; that becomes #/billing.
function takeBillingReturn() {
  if (location.pathname !== "/billing") return;
  const outcome = new URLSearchParams(location.search).get("checkout");
  if (outcome === "success") {
    state.notice = "Thank you! Your subscription is being set up and shows here within a few moments.";
  } else if (outcome === "canceled") {
    state.notice = "Checkout was canceled; nothing was charged.";
  }
  history.replaceState(null, "", "/#/billing");
}

const DATE = { year: "numeric", month: "short", day: "numeric" };

function day(value) {
  return value ? new Date(value).toLocaleDateString(undefined, DATE) : "";
}

function money(cents, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: (currency || "usd").toUpperCase() })
      .format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${currency || ""}`.trim();
  }
}

function capitalize(text) {
  const words = String(text || "").replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// What the plan panel says: a badge and a sentence, from the entitlement and the subscription.
function describePlan(billing, usage) {
  const { entitlement: ent, subscription: sub, comp } = billing;
  const cancelsAt = sub && (sub.cancel_at || (sub.cancel_at_period_end ? sub.current_period_end : null));
  const graceUntil = usage?.renewal_grace_until || ent.renewal_grace_until;
  if (ent.source === "free") {
    return { badge: "Free", tone: "quiet", detail: `${ent.monthly_limit} photos a month. Upgrade for more.` };
  }
  if (ent.source === "comp") {
    return {
      badge: "Complimentary", tone: "",
      detail: comp?.until ? `Granted by our team until ${day(comp.until)}.` : "Granted by our team.",
    };
  }
  if (ent.status === "past_due") {
    return {
      badge: "Past due", tone: "bad",
      detail: `Your last payment did not go through and Stripe is retrying it. Your plan stays active until ${day(ent.period_end)}; update your card under Manage billing.`,
    };
  }
  if (cancelsAt) {
    return {
      badge: `Cancels on ${day(cancelsAt)}`, tone: "warn",
      detail: `Your plan stays active until ${day(cancelsAt)}, then moves to the free plan.`,
    };
  }
  if (ent.status === "trialing") {
    return { badge: "Trial", tone: "", detail: `Your trial runs until ${day(sub?.current_period_end || ent.period_end)}.` };
  }
  const renews = sub?.current_period_end || ent.period_end;
  // A renewal grace is announced with every renewing plan; it matters once the period is over
  // and Stripe's renewal has not arrived yet (it can come hours late).
  if (graceUntil && (usage?.status === "renewal_grace" || Date.now() >= new Date(renews).getTime())) {
    return {
      badge: "Renewal pending", tone: "warn",
      detail: `We have not yet heard about your renewal; your plan stays in force until ${day(graceUntil)}.`,
    };
  }
  return { badge: capitalize(ent.status), tone: "", detail: `Renews on ${day(renews)}.` };
}

function renderPlan(billing, usage, plans) {
  const { badge, tone, detail } = describePlan(billing, usage);
  document.getElementById("plan-name").textContent = billing.plan.name;
  const status = document.getElementById("plan-status");
  status.textContent = badge;
  status.className = `badge ${tone}`.trim();
  document.getElementById("plan-detail").textContent = detail;
  const actions = document.getElementById("plan-actions");
  const error = document.getElementById("billing-error");
  const upgrades = plans.filter((p) => p.purchasable && p.monthly_limit > billing.entitlement.monthly_limit);
  for (const plan of upgrades) {
    actions.append(el("button", {
      type: "button", class: "upgrade", "data-plan": plan.code,
      onclick: (event) => redirectTo(event.currentTarget, "/v1/billing/checkout", { plan: plan.code }, error),
    }, `Upgrade to ${plan.name} · ${money(plan.price_cents, plan.currency)}/month · ${plan.monthly_limit} photos`));
  }
  if (billing.has_billing_account) {
    actions.append(el("button", {
      type: "button", id: "manage-billing", class: "secondary",
      onclick: (event) => redirectTo(event.currentTarget, "/v1/billing/portal", undefined, error),
    }, "Manage billing"));
  }
}

// Checkout and the portal answer with a Stripe URL; without Stripe configured, a 503 whose
// message is shown as it is.
async function redirectTo(button, path, json, error) {
  error.textContent = "";
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const { url } = await api(path, { method: "POST", json });
    location.assign(url);
  } catch (err) {
    error.textContent = err.message;
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// The bar shows what counts against the allowance (staged, in flight); failed photos are
// listed beside it because they are not charged. Older servers only report `used`.
function renderUsage(usage) {
  const bar = document.getElementById("usage-bar");
  const legend = document.getElementById("usage-legend");
  document.getElementById("usage-period").textContent =
    `${capitalize(usage.plan)} plan · ${day(usage.period_start)} – ${day(usage.period_end)}`;
  const limit = Math.max(usage.limit, 0);
  const detailed = typeof usage.staged === "number";
  const segments = detailed
    ? [["staged", "Staged", usage.staged], ["flight", "In progress", usage.in_flight ?? 0]]
    : [["used", "Used", usage.used]];
  let filled = 0;
  for (const [key, , count] of segments) {
    const share = limit ? Math.min(100 - filled, (100 * count) / limit) : 0;
    filled += share;
    const part = el("span", { class: `seg-${key}` });
    // Set through the CSSOM: the page's CSP allows no inline style attributes.
    part.style.width = `${share}%`;
    bar.append(part);
  }
  const items = segments.map(([key, name, count]) => [key, name, count]);
  if (detailed) items.push(["failed", "Failed, not charged", usage.failed ?? 0]);
  items.push(["left", "Left", usage.remaining]);
  legend.replaceChildren(...items.map(([key, name, count]) => el("li", { "data-key": key },
    el("span", { class: `key key-${key}`, "aria-hidden": "true" }), `${name} `, el("strong", {}, String(count)))));
  const summary = detailed
    ? `${usage.used} of ${usage.limit} photos used: ${usage.staged} staged, ${usage.in_flight ?? 0} in progress; ${usage.failed ?? 0} failed and not charged; ${usage.remaining} left`
    : `${usage.used} of ${usage.limit} photos used; ${usage.remaining} left`;
  bar.setAttribute("aria-label", summary);
  bar.title = summary;
  document.getElementById("usage-note").textContent = detailed
    ? `${usage.used} of ${usage.limit} photos this period. Photos we fail to stage are never charged.`
    : `${usage.used} of ${usage.limit} photos this period.`;
}

async function renderInvoices() {
  const table = document.getElementById("invoices");
  const rows = document.getElementById("invoice-rows");
  const more = document.getElementById("more-invoices");
  let cursor = null;
  async function page() {
    const data = await api(`/v1/billing/invoices?limit=12${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    for (const invoice of data.items) {
      const paid = invoice.status === "paid";
      const url = invoice.hosted_invoice_url || invoice.invoice_pdf;
      const name = invoice.invoice_number || invoice.stripe_invoice_id;
      rows.append(el("tr", {},
        el("td", { class: "date" }, day(invoice.created_at)),
        el("td", { class: "number" }, name),
        el("td", { class: "amount" }, money(paid ? invoice.amount_paid : invoice.amount_due, invoice.currency)),
        el("td", { class: "state" }, capitalize(invoice.status)),
        el("td", { class: "link" }, url
          ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", "aria-label": `View invoice ${name} (opens Stripe)` }, "View")
          : "")));
    }
    table.hidden = !rows.children.length;
    document.getElementById("no-invoices").hidden = rows.children.length > 0;
    cursor = data.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", page);
  await page();
}

async function showBilling() {
  template("billing-tpl");
  const notice = document.getElementById("billing-notice");
  if (state.notice) {
    notice.textContent = state.notice;
    notice.hidden = false;
    state.notice = null;
  }
  const [billing, usage, plans] = await Promise.all([
    api("/v1/billing/subscription"),
    api("/v1/usage").catch(() => null),
    api("/v1/plans", { auth: false }).then((data) => data.items).catch(() => []),
  ]);
  renderPlan(billing, usage, plans);
  if (usage) renderUsage(usage);
  else document.getElementById("usage-note").textContent = "Usage is unavailable right now; try again shortly.";
  await renderInvoices();
  view.dataset.ready = "billing";
}

async function route() {
  closeStream();
  if (!state.token) {
    document.getElementById("account").hidden = true;
    return showSignIn();
  }
  const billingLink = document.getElementById("billing-link");
  if (location.hash === "#/billing") billingLink.setAttribute("aria-current", "page");
  else billingLink.removeAttribute("aria-current");
  try {
    await refreshAccount();
    const match = location.hash.match(/^#\/projects\/([0-9a-f-]{36})$/);
    if (match) await showProject(match[1]);
    else if (location.hash === "#/billing") await showBilling();
    else await showProjects();
  } catch (err) {
    view.replaceChildren(el("section", { class: "card" }, el("p", { class: "error" }, err.message)));
  }
}

document.getElementById("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
takeBillingReturn();
finishAuth0().finally(route);
