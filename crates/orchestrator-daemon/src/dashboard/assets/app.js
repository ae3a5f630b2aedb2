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

async function runsView() {
  const runs = await api("/v1/runs?limit=200");
  const now = Date.now();
  const rows = runs.map((r) =>
    h("tr", { class: "link", "data-run": r.id, onclick: () => go(`#/runs/${encodeURIComponent(r.id)}`) },
      h("td", {}, h("code", {}, short(r.id))),
      h("td", {}, r.workflow),
      h("td", {}, pill(r.state)),
      h("td", {}, String(r.priority)),
      h("td", {}, progress(r)),
      h("td", {}, duration((r.ended_at_ms || now) - r.created_at_ms)),
      h("td", { class: "muted" }, when(r.created_at_ms)),
    ));
  return [
    h("h1", {}, "Runs"),
    runs.length === 0
      ? h("p", { class: "muted" }, "No runs yet. Start one with ", h("code", {}, "orch run FILE"), ".")
      : h("table", { id: "runs" },
          h("thead", {}, h("tr", {}, ...["Run", "Workflow", "State", "Priority", "Progress", "Duration", "Created"].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows)),
  ];
}

// The DAG: one column per plan layer, edges from each need to its stage,
// the critical path drawn thicker and in its own colour.
function dagView(detail, selected) {
  const W = 180, H = 54, GX = 70, GY = 22, PAD = 20;
  const layers = detail.plan.layers;
  const byId = Object.fromEntries(detail.stages.map((st) => [st.stage_id, st]));
  const pos = {};
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  layers.forEach((layer, col) => {
    const offset = ((tallest - layer.length) * (H + GY)) / 2;
    layer.forEach((id, row) => {
      pos[id] = { x: PAD + col * (W + GX), y: PAD + offset + row * (H + GY) };
    });
  });
  const width = PAD * 2 + layers.length * W + Math.max(0, layers.length - 1) * GX;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GY;
  const crit = detail.plan.critical_path || [];
  const critEdges = new Set(crit.slice(1).map((id, i) => `${crit[i]}>${id}`));
  const critNodes = new Set(crit);
  const edges = [];
  for (const st of detail.stages) {
    for (const need of st.needs) {
      const a = pos[need], b = pos[st.stage_id];
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      const isCrit = critEdges.has(`${need}>${st.stage_id}`);
      edges.push(s("path", {
        class: `edge${isCrit ? " critical" : ""}`,
        d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
        "data-from": need, "data-to": st.stage_id,
      }));
    }
  }
  const colour = {
    succeeded: "#1f8a4c", failed: "#c62f2f", blocked: "#c62f2f", running: "#2f6fd6", validating: "#2f6fd6",
    retrying: "#2f6fd6", awaiting_approval: "#b87b00", awaiting_input: "#b87b00", awaiting_decision: "#b87b00",
    paused: "#b87b00", suspended: "#b87b00", cancelled: "#5b5f66", skipped: "#5b5f66",
  };
  const nodes = Object.entries(pos).map(([id, p]) => {
    const st = byId[id] || { state: "pending", step: 0, steps_total: 0 };
    const cls = ["node", `st-${st.state}`, critNodes.has(id) ? "critical" : "", id === selected ? "selected" : ""].join(" ").trim();
    // Steps from 0, as everywhere; a step run again shows its round.
    const steps = st.steps_total ? `step ${st.step} of ${st.steps_total}${st.round > 1 ? ` · round ${st.round}` : ""}` : "";
    return s("g", {
      class: cls, "data-stage": id, "data-state": st.state, transform: `translate(${p.x},${p.y})`,
      onclick: () => go(`#/runs/${encodeURIComponent(detail.run.id)}/${encodeURIComponent(id)}`),
    },
      s("title", {}, `${id}: ${st.state}`),
      s("rect", { class: "box", width: W, height: H, rx: 8 }),
      s("rect", { class: "stripe", width: 7, height: H - 6, x: 3, y: 3, rx: 3, fill: colour[st.state] || "#8a8f98" }),
      s("text", { x: 16, y: 22 }, id.length > 22 ? `${id.slice(0, 21)}…` : id),
      s("text", { x: 16, y: 41, class: "sub" }, `${st.state.replace(/_/g, " ")}${steps ? " · " + steps : ""}`),
    );
  });
  return [
    s("svg", { class: "dag", id: "dag", viewBox: `0 0 ${width} ${height}`, style: { maxHeight: `${Math.max(160, height)}px` } },
      ...edges, ...nodes),
    h("div", { class: "legend" }, "Layers left to right; ", h("span", { class: "crit" }, "critical path"),
      crit.length ? `: ${crit.join(" → ")}` : ""),
  ];
}

function runActions(r) {
  const base = `/v1/runs/${encodeURIComponent(r.id)}`;
  const out = [];
  if (r.state === "running" || r.state === "queued")
    out.push(h("button", { class: "plain", "data-action": "pause", onclick: () => act(`${base}/pause`, {}, "pausing at the next checkpoints") }, "Pause"));
  if (r.state === "paused")
    out.push(h("button", { "data-action": "resume", onclick: () => act(`${base}/resume`, {}, "resumed") }, "Resume"));
  if (!["succeeded", "failed", "cancelled"].includes(r.state))
    out.push(h("button", { class: "danger", "data-action": "cancel", onclick: () => confirm(`Cancel run ${r.id}?`) && act(`${base}/cancel`, {}, "cancelled") }, "Cancel"));
  return out;
}

async function runView(route) {
  const detail = await api(`/v1/runs/${encodeURIComponent(route.run)}`);
  state.detail = detail;
  const r = detail.run;
  const stage = route.stage || null;
  const now = Date.now();
  const info = h("dl", { class: "kv" },
    h("dt", {}, "state"), h("dd", {}, pill(r.state)),
    h("dt", {}, "workflow"), h("dd", {}, r.workflow),
    h("dt", {}, "priority"), h("dd", {}, String(r.priority), r.suggested_priority !== null && r.suggested_priority !== undefined && r.suggested_priority !== r.priority ? h("span", { class: "muted" }, ` (asked ${r.suggested_priority})`) : ""),
    h("dt", {}, "progress"), h("dd", {}, progress(r)),
    h("dt", {}, "duration"), h("dd", {}, duration((r.ended_at_ms || now) - r.created_at_ms)),
    h("dt", {}, "project"), h("dd", {}, h("code", {}, r.project_dir)),
    r.branch ? [h("dt", {}, "branch"), h("dd", {}, h("code", {}, r.branch))] : [],
    r.base_commit ? [h("dt", {}, "from"), h("dd", {}, h("code", {}, short(r.base_commit)))] : [],
    inputsView(detail.inputs),
  );
  return [
    h("h1", {}, "Run ", h("code", {}, r.id)),
    h("div", { class: "row" },
      h("div", { class: "panel grow" }, info, h("div", { class: "actions" }, runActions(r))),
    ),
    h("h2", {}, "Stages"),
    dagView(detail, stage),
    stage ? stagePanel(detail, stage) : h("p", { class: "muted" }, "Click a stage to see its steps, checkpoints and logs."),
  ];
}

// A run's bound inputs, one `name = value` a line; values as its commands
// see them (strings as they are, anything else as JSON).
function inputsView(inputs) {
  const names = Object.keys(inputs || {});
  if (!names.length) return [];
  const text = (v) => (typeof v === "string" ? v : v === null ? "" : JSON.stringify(v));
  return [h("dt", {}, "inputs"), h("dd", { class: "inputs" },
    names.map((n) => h("div", {}, h("code", {}, n), " = ", h("code", {}, text(inputs[n])))))];
}

function stageActions(detail, st) {
  const base = `/v1/runs/${encodeURIComponent(detail.run.id)}/stages/${encodeURIComponent(st.stage_id)}`;
  const key = `${detail.run.id}/${st.stage_id}`;
  const out = [];
  if (st.state === "awaiting_approval") {
    const fb = h("textarea", { "data-draft": `reject:${key}`, placeholder: "feedback for the step, if you reject" });
    const latest = detail.checkpoints.filter((c) => c.stage_id === st.stage_id).pop();
    out.push(h("div", { class: "panel item" },
      h("strong", {}, "Waits for your approval"),
      latest ? changesPanel(detail.run.id, latest.commit) : "",
      h("div", { class: "actions" },
        h("button", { "data-action": "approve", onclick: () => act(`${base}/approve`, {}, `approved ${st.stage_id}`) }, "Approve"),
      ),
      fb,
      h("div", { class: "actions" },
        h("button", { class: "danger", "data-action": "reject", onclick: () => {
          if (!fb.value.trim()) return toast("Say what to change: the step runs again with your feedback.", true);
          act(`${base}/reject`, { feedback: fb.value }, `rejected ${st.stage_id}`);
        } }, "Reject with feedback")),
    ));
  }
  if (st.state === "awaiting_decision") {
    out.push(h("div", { class: "panel item decision" },
      h("strong", {}, "Failed: decide what happens"),
      h("div", { class: "actions" },
        h("button", { "data-action": "retry", onclick: () => act(`${base}/retry`, {}, `retrying ${st.stage_id}`) }, "Retry"),
        h("button", { class: "plain", "data-action": "skip", onclick: () => act(`${base}/skip`, {}, `skipped ${st.stage_id}`) }, "Skip"),
        h("button", { class: "danger", "data-action": "abort", onclick: () => act(`${base}/abort`, {}, `aborted ${st.stage_id}`) }, "Abort"),
      ),
      sendBackForm(detail, st)));
  }
  for (const q of detail.questions.filter((q) => q.stage_id === st.stage_id && q.state === "open")) {
    out.push(questionForm(q));
  }
  return out;
}

// Text a step wrote (its question, its choices, its failure) is quoted
// under a label, never shown as the dashboard's own words: control and
// direction-changing characters are dropped and it is cut at 500 characters.
const STEP_TEXT_MAX = 500;
function stepText(text) {
  const clean = String(text ?? "")
    .replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g, "");
  return clean.length > STEP_TEXT_MAX ? clean.slice(0, STEP_TEXT_MAX) + "…" : clean;
}
function stepSaid(label, text) {
  return h("div", { class: "step-said" },
    h("span", { class: "muted" }, label),
    h("blockquote", { class: "step-text" }, stepText(text)));
}

function questionForm(q, head) {
  const path = `/v1/runs/${encodeURIComponent(q.run_id)}/questions/${q.id}/answer`;
  const send = (text) => act(path, { text }, "answered");
  const input = h("input", { type: "text", "data-draft": `answer:${q.id}`, placeholder: "your answer" });
  return h("div", { class: "panel item", "data-question": q.id },
    head || "",
    stepSaid("The step asks:", q.question),
    q.waiting ? h("div", { class: "muted", "data-waiting": q.id }, "Its step waits for your answer while it runs, holding its slot.") : "",
    q.choices.length
      ? h("div", { class: "actions" }, q.choices.map((c) => h("button", { class: "plain", "data-action": "answer", title: "a choice the step offered", onclick: () => send(c) }, stepText(c).slice(0, 80))))
      : [input, h("div", { class: "actions" }, h("button", { "data-action": "answer", onclick: () => input.value.trim() && send(input.value) }, "Answer"))],
  );
}

// The stages a failed stage needs, directly or through others: where its
// work can be sent back to, with feedback.
function ancestorsOf(detail, id) {
  const needs = Object.fromEntries(detail.stages.map((x) => [x.stage_id, x.needs]));
  const seen = [];
  const todo = [...(needs[id] || [])];
  while (todo.length) {
    const n = todo.pop();
    if (seen.includes(n)) continue;
    seen.push(n);
    todo.push(...(needs[n] || []));
  }
  return seen;
}

function sendBackForm(detail, st) {
  const targets = ancestorsOf(detail, st.stage_id);
  if (!targets.length) return "";
  const key = `${detail.run.id}/${st.stage_id}`;
  const pick = h("select", { "data-draft": `send-back-to:${key}` }, targets.map((t) => h("option", { value: t }, t)));
  const fb = h("textarea", { "data-draft": `send-back:${key}`, placeholder: "feedback for the stage the work goes back to" });
  return h("div", {},
    h("p", { class: "muted" }, "Or send the work back: that stage runs its last step again with your feedback, then every stage after it runs again."),
    pick, fb,
    h("div", { class: "actions" },
      h("button", { class: "plain", "data-action": "send-back", onclick: () => {
        if (!fb.value.trim()) return toast("Say what to change: the stage runs again with your feedback.", true);
        const to = pick.value;
        act(`/v1/runs/${encodeURIComponent(detail.run.id)}/stages/${encodeURIComponent(to)}/retry`, { feedback: fb.value }, `sent the work back to ${to}`);
      } }, "Send back with feedback")));
}

function stagePanel(detail, stageId) {
  const st = detail.stages.find((x) => x.stage_id === stageId);
  if (!st) return h("p", { class: "error" }, `No stage ${stageId} in this run.`);
  const jobs = detail.jobs.filter((j) => j.stage_id === stageId).sort((a, b) => a.id - b.id);
  const cps = detail.checkpoints.filter((c) => c.stage_id === stageId);
  const now = Date.now();
  const steps = [];
  for (let i = 0; i < st.steps_total; i++) {
    const attempts = jobs.filter((j) => j.step === i);
    const cp = cps.filter((c) => c.step === i);
    steps.push(h("tr", { "data-step": i },
      h("td", {}, String(i), cp[0]?.step_name ? h("div", { class: "muted" }, cp[0].step_name) : ""),
      h("td", {}, attempts.length === 0 ? h("span", { class: "muted" }, i < st.step ? "" : "not started") :
        attempts.map((j) => h("div", {},
          pill(j.state), " ",
          h("button", { class: "linkish", "data-job": j.id, onclick: () => openLog(detail.run.id, j) }, `job ${j.id}`),
          ` · round ${j.round} (${j.round_reason}) · attempt ${j.attempt}`,
          j.agent_id ? ` · ${j.agent_id}` : "",
          j.sandbox ? ` · ${j.sandbox}` : "",
          j.exit_codes.length ? ` · exit ${j.exit_codes.map((c) => (c === null ? "–" : c)).join(",")}` : "",
          j.started_at_ms ? ` · ${duration((j.ended_at_ms || now) - j.started_at_ms)}` : "",
          j.error ? h("div", { class: "error" }, `${j.error_class ? j.error_class + ": " : ""}${j.error}`) : ""))),
      h("td", {}, cp.map((c) => h("div", {},
        h("code", { title: c.commit }, short(c.commit, 10)),
        c.artifacts.length ? h("ul", {}, c.artifacts.map((a) => h("li", {}, h("code", {}, a.path), h("span", { class: "muted" }, ` ${a.size} B`)))) : h("span", { class: "muted" }, " no artifacts")))),
    ));
  }
  if (!state.log || state.log.stage !== stageId || state.log.run !== detail.run.id) {
    const latest = jobs[jobs.length - 1];
    if (latest) openLog(detail.run.id, latest, true);
    else stopLog();
  } else {
    const j = jobs.find((x) => x.id === state.log.job);
    if (j && state.log.ended !== j.state && ["succeeded", "failed", "expired", "cancelled"].includes(j.state)) pollLog();
  }
  return h("div", { class: "panel", id: "stage", "data-stage": stageId },
    h("h2", {}, "Stage ", h("code", {}, stageId), " ", pill(st.state)),
    h("p", { class: "muted" },
      `${st.round ? `round ${st.round} · ` : ""}attempt ${st.attempt}`,
      st.iteration ? ` · iteration ${st.iteration}` : "",
      st.agent_id ? ` · on ${st.agent_id}` : "",
      st.started_at_ms ? ` · ${duration((st.ended_at_ms || now) - st.started_at_ms)}` : "",
      st.needs.length ? ` · needs ${st.needs.join(", ")}` : ""),
    stageActions(detail, st),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Rounds"), h("th", {}, "Checkpoint"))),
      h("tbody", {}, steps)),
    outputsTable(st),
    logPanel(),
  );
}

// The most characters of an output's value the page shows.
const SHOWN_VALUE = 2000;

// A stage's outputs: step text, so put in as text, its invisible
// characters named, long values cut (the API's run detail has them whole).
function outputsTable(st) {
  const outs = Object.entries(st.outputs || {});
  if (!outs.length) return "";
  return h("table", { class: "outputs", "data-outputs": st.stage_id },
    h("thead", {}, h("tr", {}, h("th", {}, "Output"), h("th", {}, "Value"))),
    h("tbody", {}, outs.map(([k, v]) => h("tr", { "data-output": k },
      h("td", {}, h("code", {}, k)),
      h("td", {}, h("pre", {}, visible(v.length > SHOWN_VALUE ? v.slice(0, SHOWN_VALUE) : v)),
        v.length > SHOWN_VALUE ? h("div", { class: "muted" }, `cut at ${SHOWN_VALUE} of ${v.length} characters`) : "")))));
}

// ---------- changes ----------

// A patch is text a step wrote: put in the page as text only, with the
// characters that reorder or hide text (bidirectional controls, zero-width
// ones) shown by name, so what a reviewer reads is what would be approved.
function visible(text) {
  return String(text ?? "").replace(/[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g,
    (c) => `<U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}>`);
}

// The change a checkpoint's step made, file by file; fetched once per commit.
const diffs = new Map();
function changesPanel(runId, commit) {
  const box = h("div", { class: "changes", "data-changes": commit }, h("span", { class: "muted" }, "Loading the change…"));
  const fill = (d) => box.replaceChildren(...changesOf(d).flat().filter((c) => c !== ""));
  if (diffs.has(commit)) fill(diffs.get(commit));
  else {
    api(`/v1/runs/${encodeURIComponent(runId)}/diff?commit=${encodeURIComponent(commit)}`)
      .then((d) => { diffs.set(commit, d); fill(d); })
      .catch((e) => box.replaceChildren(h("span", { class: "error" }, `The change cannot be shown: ${e.message}`)));
  }
  return box;
}

function changesOf(d) {
  if (!d.files.length) return [h("span", { class: "muted" }, "This step changed no file.")];
  const ins = d.files.reduce((n, f) => n + f.insertions, 0);
  const del = d.files.reduce((n, f) => n + f.deletions, 0);
  const line = (l) => h("span", { class: l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : "" }, visible(l) + "\n");
  return [
    h("div", { class: "muted" }, `${d.files.length} file${d.files.length === 1 ? "" : "s"} changed, ${ins} insertion${ins === 1 ? "" : "s"}(+), ${del} deletion${del === 1 ? "" : "s"}(-)`),
    d.files.map((f) => h("details", { class: "file", "data-file": f.path },
      h("summary", {},
        h("code", {}, visible(f.old_path ? `${f.old_path} → ${f.path}` : f.path)), " ",
        h("span", { class: "add" }, `+${f.insertions}`), " ",
        h("span", { class: "del" }, `-${f.deletions}`), " ",
        h("span", { class: "muted" }, f.status)),
      f.binary ? h("p", { class: "muted" }, "binary file")
        : h("pre", { class: "patch" }, f.patch.replace(/\n$/, "").split("\n").map(line)),
      f.truncated ? h("p", { class: "muted" }, "The patch is cut here: orch diff shows all of it.") : "")),
    d.files_left_out ? h("p", { class: "muted" }, `${d.files_left_out} more files are not shown: orch diff lists them.`) : "",
  ];
}

// ---------- logs ----------

function stopLog() {
  if (state.log) clearTimeout(state.log.timer);
  state.log = null;
}

function openLog(run, job, quiet) {
  stopLog();
  state.log = { run, stage: job.stage_id, job: job.id, cmd: 0, stream: "stdout", text: "", next: 0, commands: 0, ended: false, timer: null };
  pollLog();
  if (!quiet) refreshSoon(0);
}

function logPanel() {
  const l = state.log;
  if (!l) return h("p", { class: "muted" }, "No job has run yet.");
  const tabs = [];
  for (let i = 0; i < Math.max(1, l.commands); i++) {
    for (const stream of ["stdout", "stderr"]) {
      const on = l.cmd === i && l.stream === stream;
      tabs.push(h("button", { class: on ? "" : "plain", onclick: () => {
        Object.assign(state.log, { cmd: i, stream, text: "", next: 0 });
        pollLog();
        refreshSoon(0);
      } }, `cmd ${i} ${stream}`));
    }
  }
  return h("div", {},
    h("h2", {}, `Logs of job ${l.job}`, l.ended ? "" : h("span", { class: "muted" }, " (following)")),
    h("div", { class: "tabs" }, tabs),
    h("pre", { class: "log", id: "log" }, l.text || (l.exists === false ? "(no output yet)" : "")),
  );
}

async function pollLog() {
  const l = state.log;
  if (!l) return;
  clearTimeout(l.timer);
  try {
    const q = `cmd=${l.cmd}&stream=${l.stream}&offset=${l.next}`;
    const piece = await api(`/v1/runs/${encodeURIComponent(l.run)}/jobs/${l.job}/logs?${q}`);
    if (state.log !== l) return;
    l.text += piece.text;
    l.next = piece.next;
    l.exists = piece.exists;
    const grew = l.commands !== piece.commands;
    l.commands = piece.commands;
    l.ended = piece.ended;
    const pre = document.getElementById("log");
    if (pre) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = l.text || (l.exists ? "" : "(no output yet)");
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    if (grew) refreshSoon(0);
    // A running command is followed once a second; an ended one is read to its end.
    if (!piece.ended || piece.next < piece.size) {
      l.timer = setTimeout(pollLog, piece.next < piece.size ? 0 : 1000);
    }
  } catch (e) {
    if (state.log === l) l.timer = setTimeout(pollLog, 3000);
  }
}

// ---------- inbox and agents ----------

async function inboxView() {
  const items = await api("/v1/inbox");
  const rows = items.map((it) => {
    const base = `/v1/runs/${encodeURIComponent(it.run_id)}/stages/${encodeURIComponent(it.stage_id)}`;
    const key = `${it.run_id}/${it.stage_id}`;
    const head = h("div", {},
      h("strong", {}, it.kind), " · ",
      h("a", { href: `#/runs/${encodeURIComponent(it.run_id)}/${encodeURIComponent(it.stage_id)}` }, `${it.workflow} / ${it.stage_id}`),
      h("span", { class: "muted" }, ` · step ${it.step}${it.step_name ? " " + it.step_name : ""} · waiting ${duration(Date.now() - it.since_ms)}`),
      it.commit ? h("span", { class: "muted" }, " · commit ", h("code", { "data-commit": it.commit }, short(it.commit, 10))) : "");
    if (it.kind === "question" && it.question) return questionForm(it.question, head);
    if (it.kind === "approval") {
      const fb = h("textarea", { "data-draft": `reject:${key}`, placeholder: "feedback for the step, if you reject" });
      return h("div", { class: "panel item", "data-item": key },
        head,
        it.commit ? changesPanel(it.run_id, it.commit) : "",
        h("div", { class: "actions" },
          h("button", { "data-action": "approve", onclick: () => act(`${base}/approve`, {}, `approved ${it.stage_id}`) }, "Approve")),
        fb,
        h("div", { class: "actions" },
          h("button", { class: "danger", "data-action": "reject", onclick: () => {
            if (!fb.value.trim()) return toast("Say what to change: the step runs again with your feedback.", true);
            act(`${base}/reject`, { feedback: fb.value }, `rejected ${it.stage_id}`);
          } }, "Reject with feedback")));
    }
    return h("div", { class: "panel item decision", "data-item": key },
      head,
      it.error ? stepSaid("What was reported:", it.error) : "",
      h("div", { class: "actions" },
        h("button", { "data-action": "retry", onclick: () => act(`${base}/retry`, {}, `retrying ${it.stage_id}`) }, "Retry"),
        h("button", { class: "plain", "data-action": "skip", onclick: () => act(`${base}/skip`, {}, `skipped ${it.stage_id}`) }, "Skip"),
        h("button", { class: "danger", "data-action": "abort", onclick: () => act(`${base}/abort`, {}, `aborted ${it.stage_id}`) }, "Abort")));
  });
  return [h("h1", {}, "Inbox"), items.length ? h("div", { id: "inbox" }, rows) : h("p", { class: "muted" }, "Nothing waits for you.")];
}

function mib(n) {
  return n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`;
}

async function agentsView() {
  const agents = await api("/v1/agents");
  const now = Date.now();
  const rows = agents.map((a) => h("tr", { "data-agent": a.name },
    h("td", {}, a.name, h("div", { class: "muted" }, a.hostname || "")),
    h("td", {}, h("span", { class: `state ${a.online ? "s-succeeded" : "s-cancelled"}` }, a.online ? "online" : "offline")),
    h("td", {}, `${a.running} of ${a.slots} slots`, h("div", {}, h("span", { class: "bar" }, h("span", { style: { width: `${a.slots ? (100 * Math.min(a.running, a.slots)) / a.slots : 0}%` } })))),
    h("td", {}, a.memory_mb ? `${mib(a.memory_mb - a.free.memory_mb)} of ${mib(a.memory_mb)}` : h("span", { class: "muted" }, "not declared")),
    h("td", {}, a.gpus.length ? a.free.gpus.map((g) => h("div", {}, `gpu${g.index}: ${mib(g.total_mb - g.free_mb)} of ${mib(g.total_mb)}`)) : h("span", { class: "muted" }, "none")),
    h("td", {}, a.labels.map((l) => h("code", {}, l, " "))),
    h("td", { class: "muted" }, `${duration(now - a.last_seen_ms)} ago`),
  ));
  return [h("h1", {}, "Agents"), agents.length
    ? h("table", { id: "agents" },
        h("thead", {}, h("tr", {}, ...["Agent", "", "Slots in use", "Memory in use", "GPUs", "Labels", "Last seen"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows))
    : h("p", { class: "muted" }, "No agent has registered. Start one with ", h("code", {}, "orch agent"), ".")];
}

// ---------- start ----------

function start() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  followEvents();
  render();
}

async function boot() {
  document.getElementById("logout").addEventListener("click", logOutEverywhere);
  const m = location.hash.match(/ticket=([^&]+)/);
  if (m) {
    // The ticket works once; it leaves the address bar at once.
    history.replaceState(null, "", location.pathname + "#/");
    try {
      state.token = await redeemTicket(decodeURIComponent(m[1]));
      sessionStorage.setItem(TOKEN_KEY, state.token);
    } catch (e) {
      return showLogin(e.message);
    }
  }
  if (!state.token) return showLogin();
  start();
}

boot();
