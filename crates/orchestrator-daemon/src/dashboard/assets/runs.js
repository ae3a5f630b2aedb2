// The orch dashboard, runs: the list, a run's graph,
// its stages' panels and actions. Served as one script after app.js
// (dashboard/mod.rs concatenates the files), so it shares app.js's scope
// and strict mode.

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
    paused: "#b87b00", suspended: "#b87b00", cancelled: "#5b5f66", skipped: "#5b5f66", bypassed: "#5b5f66",
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

