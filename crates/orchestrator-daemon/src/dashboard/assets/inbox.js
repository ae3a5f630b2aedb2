// The orch dashboard, the inbox and the agents. Served as one script after app.js
// (dashboard/mod.rs concatenates the files), so it shares app.js's scope
// and strict mode.

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

