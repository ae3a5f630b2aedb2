// The orch dashboard, what a checkpoint changed and a
// command's live log. Served as one script after app.js
// (dashboard/mod.rs concatenates the files), so it shares app.js's scope
// and strict mode.

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

