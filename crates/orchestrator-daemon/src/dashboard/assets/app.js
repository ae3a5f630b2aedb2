// The orch dashboard: one page that reads and acts through the daemon's
// /v1 API with the admin token (or a session from a login link), and
// follows /v1/events to redraw what changed. Every string from the API is
// put in the page as text, never as markup.
"use strict";

const TOKEN_KEY = "orch.token";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  route: { view: "runs" },
  refreshTimer: null,
  events: null,
  lastSeq: null,
  log: null, // { run, job, cmd, stream, text, next, ended, timer }
  selectedStage: null,
  detail: null,
};

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElementNS(
    tag === "svg" || attrs?.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
    tag,
  );
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "svg" || v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    // Through the CSSOM: the page's policy refuses style attributes.
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const s = (tag, attrs, ...children) => h(tag, { ...attrs, svg: true }, ...children);

function pill(st) {
  return h("span", { class: `state s-${st}`, "data-state": st }, st.replace(/_/g, " "));
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  const sec = Math.floor(ms / 1000);
  if (sec < 60) return `${(ms / 1000).toFixed(sec < 10 ? 1 : 0)}s`;
  const m = Math.floor(sec / 60), r = sec % 60;
  if (m < 60) return `${m}m ${r}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function short(id, n = 12) {
  return id && id.length > n ? id.slice(0, n) : id || "";
}

function toast(msg, isError) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = isError ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), isError ? 8000 : 3000);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const msg = (data && (data.error?.message || data.error || data.message)) || text || resp.statusText;
    if (resp.status === 401 && !opts.noLogout) logout(String(msg));
    throw new ApiError(resp.status, String(msg));
  }
  return data;
}

async function act(path, body, done) {
  try {
    await api(path, { method: "POST", body: body || {} });
    toast(done);
    refreshSoon(0);
  } catch (e) {
    toast(e.message, true);
  }
}

// ---------- login ----------

function logout(why) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopEvents();
  stopLog();
  showLogin(why);
}

// A session is ended on the server, so a copy of its token left anywhere
// dies with it; the admin token is no session and is only forgotten here.
async function logOutEverywhere() {
  if (state.token && state.token.startsWith("ui2.")) {
    try {
      await api("/v1/dashboard/logout", { method: "POST", body: {}, noLogout: true });
    } catch (e) {
      // 401: the session had ended already.
      if (e.status !== 401) return toast("Not logged out: " + e.message, true);
    }
  }
  logout("Logged out.");
}

function showLogin(why) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  const input = h("input", { type: "password", id: "token", placeholder: "admin token", autocomplete: "off" });
  const err = h("p", { class: "error", id: "login-error" }, why || "");
  const form = h(
    "form",
    {
      class: "panel login",
      onsubmit: async (ev) => {
        ev.preventDefault();
        state.token = input.value.trim();
        try {
          await api("/v1/runs?limit=1", { noLogout: true });
          sessionStorage.setItem(TOKEN_KEY, state.token);
          start();
        } catch (e) {
          state.token = null;
          err.textContent = e.status === 401 ? "That token is not accepted here." : e.message;
        }
      },
    },
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "Paste the admin token (admin.token in the daemon's data directory), or open the link that ",
      h("code", {}, "orch up"), " or ", h("code", {}, "orch dashboard"), " prints."),
    input,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Log in")),
    err,
  );
  const main = document.getElementById("main");
  main.replaceChildren(form);
  input.focus();
}

async function redeemTicket(ticket) {
  const resp = await fetch("/v1/dashboard/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ticket }),
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error(data?.error?.message || data?.error || "the link was refused");
  return data.token;
}

// ---------- routing ----------

function parseRoute() {
  const hash = location.hash.replace(/^#/, "");
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "runs" && parts[1]) return { view: "run", run: parts[1], stage: parts[2] || null };
  if (parts[0] === "inbox") return { view: "inbox" };
  if (parts[0] === "agents") return { view: "agents" };
  if (parts[0] === "workflows") return { view: "workflows" };
  return { view: "runs" };
}

function go(hash) {
  if (location.hash !== hash) location.hash = hash;
  else render();
}

window.addEventListener("hashchange", () => {
  if (state.token) render();
});

// ---------- live updates ----------

function setLive(on) {
  const el = document.getElementById("live");
  el.className = `live ${on ? "on" : "off"}`;
  el.textContent = on ? "live" : "offline";
}

function stopEvents() {
  if (state.events) state.events.abort();
  state.events = null;
  setLive(false);
}

async function followEvents() {
  stopEvents();
  const ctl = new AbortController();
  state.events = ctl;
  const since = state.lastSeq === null ? "" : `?since=${state.lastSeq}`;
  try {
    const resp = await fetch(`/v1/events${since}`, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
      signal: ctl.signal,
    });
    if (resp.status === 401) return logout("The session ended; log in again.");
    if (!resp.ok || !resp.body) throw new Error(`events: ${resp.status}`);
    setLive(true);
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let id = null, kind = null;
        for (const line of block.split("\n")) {
          if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("event:")) kind = line.slice(6).trim();
        }
        if (id !== null) state.lastSeq = Number(id);
        if (kind === "transition") refreshSoon();
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (state.events !== ctl) return;
  setLive(false);
  // The daemon restarted or the network blinked: catch up from the last seq.
  setTimeout(() => state.token && state.events === ctl && followEvents(), 1500);
}

function refreshSoon(delay = 200) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => render(true), delay);
}

// ---------- views ----------

// What the user typed survives a redraw: fields carry data-draft keys.
function keepDrafts(draw) {
  const main = document.getElementById("main");
  const drafts = {};
  let focused = null;
  for (const el of main.querySelectorAll("[data-draft]")) {
    drafts[el.dataset.draft] = el.value;
    if (el === document.activeElement) focused = el.dataset.draft;
  }
  draw();
  for (const el of main.querySelectorAll("[data-draft]")) {
    if (drafts[el.dataset.draft] !== undefined) el.value = drafts[el.dataset.draft];
    if (el.dataset.draft === focused) el.focus();
  }
}

async function render(isRefresh) {
  const route = parseRoute();
  const changed = JSON.stringify(route) !== JSON.stringify(state.route);
  state.route = route;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === route.view || (route.view === "run" && a.dataset.view === "runs"));
  }
  updateInboxCount();
  try {
    let draw;
    if (route.view === "runs") draw = await runsView();
    else if (route.view === "run") draw = await runView(route);
    else if (route.view === "inbox") draw = await inboxView();
    else if (route.view === "workflows") draw = await workflowsView();
    else draw = await agentsView();
    // A newer navigation may have drawn meanwhile.
    if (JSON.stringify(parseRoute()) !== JSON.stringify(route)) return;
    keepDrafts(() => document.getElementById("main").replaceChildren(...draw.flat(Infinity).filter((x) => x !== null && x !== undefined && x !== false)));
    if (changed && !isRefresh) window.scrollTo(0, 0);
  } catch (e) {
    if (e.status === 401) return;
    document.getElementById("main").replaceChildren(h("p", { class: "error" }, e.message));
  }
}

async function updateInboxCount() {
  try {
    const items = await api("/v1/inbox");
    const badge = document.getElementById("inbox-count");
    badge.textContent = String(items.length);
    badge.hidden = items.length === 0;
  } catch {
    /* the view shows the error */
  }
}

function progress(r) {
  const pct = r.stages_total ? Math.round((100 * r.stages_succeeded) / r.stages_total) : 0;
  return h("span", {},
    h("span", { class: "bar" }, h("span", { style: { width: `${pct}%` } })),
    " ", h("span", { class: "muted" }, `${r.stages_succeeded}/${r.stages_total}`));
}

