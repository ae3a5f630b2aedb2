// The orch dashboard, the catalog: each watched project's workflows, and a
// form that starts a run of one with its inputs. Served as one script after
// app.js (dashboard/mod.rs concatenates the files), so it shares app.js's
// scope and strict mode.

// The form's field for one declared input; its value is read back by
// `inputValue`. The daemon checks every value again (`bind_inputs`).
function inputField(name, spec) {
  const id = `input-${name}`;
  const draft = `wf-input-${name}`;
  const dflt = spec.default;
  let field;
  if (spec.type === "boolean") {
    field = h("input", { id, type: "checkbox", "data-input": name, "data-kind": "boolean" });
    field.checked = dflt === true;
  } else if (spec.type === "choice") {
    field = h("select", { id, "data-input": name, "data-kind": "choice", "data-draft": draft },
      spec.required === false || dflt !== undefined ? null : h("option", { value: "" }, "choose…"),
      (spec.choices || []).map((c, i) => h("option", { value: String(i), selected: JSON.stringify(c) === JSON.stringify(dflt) }, String(c))));
  } else if (spec.type === "list") {
    field = h("textarea", { id, rows: 3, "data-input": name, "data-kind": "list", "data-draft": draft, placeholder: "one item a line" });
    if (Array.isArray(dflt)) field.value = dflt.join("\n");
  } else {
    field = h("input", { id, type: spec.type === "number" ? "number" : "text", step: "any", "data-input": name, "data-kind": spec.type || "string", "data-draft": draft });
    if (dflt !== undefined && dflt !== null) field.value = String(dflt);
  }
  const required = dflt === undefined && spec.required !== false;
  return h("div", { class: "input-field" },
    h("label", { for: id }, h("code", {}, name), " ", h("span", { class: "muted" }, spec.type || "string", required ? ", required" : "")),
    field,
    spec.description ? h("p", { class: "muted" }, spec.description) : null);
}

// The JSON value of one field, or undefined when it is left empty (the
// input's default, if any, then applies).
function inputValue(el, spec) {
  const kind = el.dataset.kind;
  if (kind === "boolean") return el.checked;
  if (kind === "choice") return el.value === "" ? undefined : spec.choices[Number(el.value)];
  if (kind === "list") {
    const items = el.value.split("\n").map((x) => x.trim()).filter(Boolean);
    return items.length || el.value.trim() ? items : undefined;
  }
  if (el.value === "") return undefined;
  if (kind === "number") return Number(el.value);
  return el.value;
}

function runForm(wf) {
  const inputs = wf.inputs || {};
  const names = Object.keys(inputs);
  const form = h("form", { class: "run-form", "data-workflow": wf.name },
    h("h3", {}, `Run ${wf.name}`),
    names.length ? names.map((n) => inputField(n, inputs[n])) : h("p", { class: "muted" }, "This workflow takes no inputs."),
    h("button", { type: "submit", "data-action": "start" }, "Start run"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = {};
    for (const el of form.querySelectorAll("[data-input]")) {
      const v = inputValue(el, inputs[el.dataset.input]);
      if (v !== undefined) values[el.dataset.input] = v;
    }
    try {
      const made = await api("/v1/runs", {
        method: "POST",
        body: { project_dir: wf.project_dir, workflow_name: wf.name, inputs: values },
      });
      toast(`run ${short(made.run_id)} started`);
      go(`#/runs/${encodeURIComponent(made.run_id)}`);
    } catch (e) {
      // The daemon names each input that is missing or wrong.
      toast(e.message, true);
    }
  });
  return form;
}

async function workflowsView() {
  const wfs = await api("/v1/workflows");
  if (!wfs.length) {
    return [h("h2", {}, "Workflows"),
      h("p", { class: "muted" }, "No catalog: start the daemon with a project (orch up --project DIR) whose .orchestrator/workflows/ holds workflow files.")];
  }
  const open = state.openWorkflow;
  const rows = wfs.map((wf) => {
    const key = `${wf.project_dir}\u0000${wf.name}`;
    return [
      h("tr", { "data-workflow": wf.name },
        h("td", {}, wf.name),
        h("td", {}, h("code", {}, wf.project_dir)),
        h("td", {}, wf.error ? h("span", { class: "error" }, wf.error) : Object.keys(wf.inputs || {}).join(", ") || h("span", { class: "muted" }, "none")),
        h("td", {}, wf.hash
          ? h("button", { "data-action": "open-run-form", onclick: () => { state.openWorkflow = open === key ? null : key; render(true); } }, open === key ? "Close" : "Run…")
          : null)),
      open === key && wf.hash ? h("tr", {}, h("td", { colspan: 4 }, runForm(wf))) : null,
    ];
  });
  return [h("h2", {}, "Workflows"),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "workflow"), h("th", {}, "project"), h("th", {}, "inputs"), h("th", {}, ""))),
      h("tbody", {}, rows.flat()))];
}
