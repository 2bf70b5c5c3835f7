// The Real Staging web app: projects, uploads, live staging status and downloads.
// Plain modules, no build step; everything goes through the gateway's public API.

const view = document.getElementById("view");
const state = { token: sessionStorage.getItem("rs-token"), catalog: null, me: null, stream: null };

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

async function upgrade() {
  try {
    const { url } = await api("/v1/billing/checkout", { method: "POST", json: { plan: "pro" } });
    location.href = url;
  } catch (err) {
    alert(err.message);
  }
}

async function route() {
  closeStream();
  if (!state.token) {
    document.getElementById("account").hidden = true;
    return showSignIn();
  }
  try {
    await refreshAccount();
    const match = location.hash.match(/^#\/projects\/([0-9a-f-]{36})$/);
    if (match) await showProject(match[1]);
    else await showProjects();
  } catch (err) {
    view.replaceChildren(el("section", { class: "card" }, el("p", { class: "error" }, err.message)));
  }
}

document.getElementById("signout").addEventListener("click", signOut);
document.getElementById("upgrade").addEventListener("click", upgrade);
window.addEventListener("hashchange", route);
finishAuth0().finally(route);
