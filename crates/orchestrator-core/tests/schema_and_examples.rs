//! The published JSON Schema of a workflow, and the example workflows shipped
//! in `examples/`: every one of them must parse, validate and plan.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use orchestrator_core::spec::{
    workflow_schema, CommandSpec, DurationSpec, FeedbackKind, Input, InputType, Matrix,
    MatrixValues, OnFailure, Repeat, Resources, RetryOn, SizeSpec, Stage, StageOnFailure, Step,
    Validate, Workflow, WorkflowInput,
};
use orchestrator_core::{parse_workflow, plan};
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))
}

/// Every workflow file in `examples/`, by file name.
fn examples() -> BTreeMap<String, Workflow> {
    let dir = examples_dir();
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let is_workflow = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if !is_workflow {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&path).unwrap();
        match parse_workflow(&text, Some(&name)) {
            Ok(wf) => {
                out.insert(name, wf);
            }
            Err(e) => panic!("example {name} does not parse:\n{e}"),
        }
    }
    out
}

fn example(name: &str) -> Workflow {
    examples()
        .remove(name)
        .unwrap_or_else(|| panic!("examples/{name} is missing"))
}

fn stage<'a>(wf: &'a Workflow, id: &str) -> &'a Stage {
    wf.stages
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("{} has no stage {id}", wf.name))
}

fn commands(wf: &Workflow) -> impl Iterator<Item = (&Step, &CommandSpec)> {
    wf.stages
        .iter()
        .flat_map(|s| &s.steps)
        .flat_map(|st| st.commands.iter().map(move |c| (st, c)))
}

// --------------------------------------------------------------- schema

#[test]
fn the_schema_is_a_json_object_naming_the_workflow_vocabulary() {
    let schema = workflow_schema();
    assert!(schema.is_object(), "{schema}");
    let text = schema.to_string();
    for word in [
        "stages", "needs", "steps", "commands", "argv", "shell", "run", "cwd",
    ] {
        assert!(
            text.contains(&format!("\"{word}\"")),
            "schema lacks {word:?}"
        );
    }
    assert_eq!(schema["title"], "Workflow");
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, BTreeSet::from(["name", "stages"]));
}

/// The `properties` of a schema object, as a set of names.
fn properties(def: &Value) -> BTreeSet<String> {
    def["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties in {def}"))
        .keys()
        .cloned()
        .collect()
}

/// The keys of a JSON object.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_schema_refuses_unknown_fields_and_lists_exactly_the_fields_serde_accepts() {
    // A workflow with every optional field set serializes every field.
    let cmd = CommandSpec {
        argv: vec!["echo".into()],
        run: Some("echo".into()),
        cwd: Some("sub".into()),
        env: BTreeMap::from([("A".into(), "1".into())]),
        timeout: Some(DurationSpec::from_secs(1)),
    };
    let step = Step {
        name: Some("s".into()),
        shell: true,
        commands: vec![cmd.clone()],
        artifacts: vec!["dist/**".into()],
        approve: true,
        input: Some(Input {
            question: "q".into(),
            choices: vec!["x".into()],
        }),
    };
    let stage = Stage {
        id: "a".into(),
        description: Some("d".into()),
        needs: vec!["b".into()],
        condition: Some("failure() || inputs.deploy".into()),
        matrix: Some(Matrix {
            axes: vec![("py".into(), vec![Value::from("3.12")])],
            include: vec![MatrixValues(vec![("py".into(), Value::from("3.13"))])],
            exclude: vec![MatrixValues(vec![("py".into(), Value::from("3.12"))])],
        }),
        instance: None,
        labels: vec!["gpu".into()],
        resources: Some(Resources {
            memory: Some(SizeSpec::from_mib(512)),
            gpus: Some(1),
            gpu_memory: Some(SizeSpec::from_mib(8192)),
        }),
        timeout: Some(DurationSpec::from_secs(2)),
        estimate: Some(DurationSpec::from_secs(3)),
        env: BTreeMap::from([("B".into(), "2".into())]),
        steps: vec![step],
        retry: Some(orchestrator_core::spec::Retry {
            on: Some(vec![RetryOn::Infra, RetryOn::Timeout]),
            attempts: Some(3),
            initial: Some(DurationSpec::from_secs(1)),
            factor: Some(2),
            max: Some(DurationSpec::from_secs(30)),
        }),
        repeat: Some(Repeat {
            max: 2,
            until: Some(orchestrator_core::spec::Until::Command(cmd.clone())),
            shell: true,
        }),
        validate: Some(Validate {
            commands: vec![cmd],
            shell: true,
        }),
        on_failure: Some(OnFailure::Fail.into()),
        sandbox: Some(orchestrator_core::spec::SandboxKind::Namespace),
        network: true,
        image: Some("images/rootfs".into()),
        mounts: vec!["~/.cargo".into()],
        model: Some("smol".into()),
        secrets: vec!["API_KEY".into()],
        cache: vec![orchestrator_core::spec::Cache {
            path: ".venv".into(),
            key: "pip-${{ hashFiles('requirements.txt') }}".into(),
            restore_keys: vec!["pip-".into()],
        }],
    };
    let wf = Workflow {
        name: "w".into(),
        description: Some("d".into()),
        inputs: BTreeMap::from([(
            "target".into(),
            WorkflowInput {
                kind: InputType::Choice,
                description: Some("where".into()),
                default: Some(Value::from("linux")),
                required: Some(false),
                choices: vec![Value::from("linux"), Value::from("mac")],
            },
        )]),
        priority: Some(5),
        env: BTreeMap::from([("C".into(), "3".into())]),
        on_failure: Some(OnFailure::Ask),
        cache: vec![orchestrator_core::spec::Cache {
            path: "~/.cache/pip".into(),
            key: "pip".into(),
            restore_keys: vec![],
        }],
        stages: vec![stage],
    };
    let full = serde_json::to_value(&wf).unwrap();
    let schema = workflow_schema();
    let defs = &schema["$defs"];
    assert_eq!(properties(&schema), keys(&full));
    assert_eq!(properties(&defs["Stage"]), keys(&full["stages"][0]));
    assert_eq!(
        properties(&defs["Step"]),
        keys(&full["stages"][0]["steps"][0])
    );
    assert_eq!(
        properties(&defs["CommandSpec"]),
        keys(&full["stages"][0]["steps"][0]["commands"][0])
    );
    assert_eq!(
        properties(&defs["Resources"]),
        keys(&full["stages"][0]["resources"])
    );
    assert_eq!(
        properties(&defs["Validate"]),
        keys(&full["stages"][0]["validate"])
    );
    assert_eq!(
        properties(&defs["Retry"]),
        keys(&full["stages"][0]["retry"])
    );
    assert_eq!(
        properties(&defs["Cache"]),
        keys(&full["stages"][0]["cache"][0])
    );
    assert_eq!(
        properties(&defs["WorkflowInput"]),
        keys(&full["inputs"]["target"])
    );
    // A matrix's own keys are its own: only include and exclude are fixed.
    assert_eq!(
        properties(&defs["Matrix"]),
        BTreeSet::from(["include".to_owned(), "exclude".to_owned()])
    );
    assert_eq!(
        keys(&full["stages"][0]["matrix"]),
        BTreeSet::from(["py", "include", "exclude"].map(str::to_owned))
    );
    for def in [
        &defs["WorkflowInput"],
        &schema,
        &defs["Stage"],
        &defs["Step"],
        &defs["CommandSpec"],
        &defs["Resources"],
        &defs["Cache"],
    ] {
        assert_eq!(def["additionalProperties"], false, "{def}");
    }
}

#[test]
fn the_schema_describes_durations_as_seconds_or_a_string_with_a_unit() {
    let schema = workflow_schema();
    let duration = &schema["$defs"]["Duration"];
    let text = duration.to_string();
    assert!(text.contains("integer"), "{text}");
    assert!(text.contains("(ms|s|m|h)"), "{text}");
    assert!(schema["$defs"]["Stage"]["properties"]["timeout"]
        .to_string()
        .contains("#/$defs/Duration"));
}

#[test]
fn the_schema_describes_sizes_as_mib_or_a_string_with_a_binary_unit() {
    let schema = workflow_schema();
    let text = schema["$defs"]["Size"].to_string();
    assert!(text.contains("integer"), "{text}");
    assert!(text.contains("[MGTmgt]"), "{text}");
    let resources = schema["$defs"]["Resources"]["properties"].to_string();
    assert_eq!(resources.matches("#/$defs/Size").count(), 2, "{resources}");
    // The written forms round-trip through a workflow file.
    let wf = parse_workflow(
        "name: w\npriority: 3\nstages:\n  - id: a\n    resources: {memory: 4G, gpu_memory: 512, gpus: 2}\n    steps: [{commands: [{argv: [\"true\"]}]}]\n",
        Some("w.yaml"),
    )
    .unwrap();
    assert_eq!(wf.priority, Some(3));
    let r = wf.stages[0].resources.clone().unwrap();
    assert_eq!(r.memory, Some(SizeSpec::from_mib(4096)));
    assert_eq!(r.gpu_memory, Some(SizeSpec::from_mib(512)));
    assert_eq!(r.gpus, Some(2));
    let back = serde_json::to_value(&r).unwrap();
    assert_eq!(back["memory"], "4G");
    assert_eq!(back["gpu_memory"], "512M");
}

#[test]
fn every_field_of_the_schema_has_a_description() {
    let schema = workflow_schema();
    let mut objects = vec![("Workflow".to_owned(), &schema)];
    for (name, def) in schema["$defs"].as_object().unwrap() {
        objects.push((name.clone(), def));
    }
    for (name, def) in objects {
        let Some(props) = def["properties"].as_object() else {
            continue;
        };
        for (field, p) in props {
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}.{field} has no description"
            );
        }
    }
}

// ------------------------------------------------------------- examples

#[test]
fn every_example_workflow_parses_validates_and_plans() {
    let all = examples();
    for name in [
        "demo.yaml",
        "hello.yaml",
        "diamond.yaml",
        "failing.yaml",
        "coding-agent.yaml",
        "inputs.yaml",
        "matrix.yaml",
        "conditions.yaml",
    ] {
        assert!(all.contains_key(name), "examples/{name} is missing");
    }
    for (name, wf) in &all {
        let p = plan(wf).unwrap_or_else(|c| panic!("{name} has a cycle {c:?}"));
        let planned: usize = p.layers.iter().map(Vec::len).sum();
        assert_eq!(planned, wf.stages.len(), "{name}");
        assert!(
            wf.description.is_some(),
            "{name} should say what it is about"
        );
    }
}

#[test]
fn examples_stay_inside_the_worktree_and_write_only_under_their_output_directory() {
    for (name, wf) in examples() {
        // A stage's `~/...` mounts are read-only tools it runs through its
        // home; naming them reaches nothing else of the host.
        let tools: Vec<String> = wf
            .stages
            .iter()
            .flat_map(|s| &s.mounts)
            .filter_map(|m| m.strip_prefix("~/"))
            .map(|m| format!("$HOME/{m}"))
            .collect();
        // Its `~/...` caches are its own, in its home: it makes them and
        // writes there.
        let caches: Vec<String> = wf
            .stages
            .iter()
            .flat_map(|s| &s.cache)
            .filter(|c| c.path.starts_with("~/"))
            .map(|c| c.path.clone())
            .collect();
        for (_, cmd) in commands(&wf) {
            if let Some(cwd) = &cmd.cwd {
                assert!(cwd == "out" || cwd.starts_with("out/"), "{name}: cwd {cwd}");
            }
            let text = cmd.argv.join(" ") + cmd.run.as_deref().unwrap_or("");
            let text = tools
                .iter()
                .fold(text, |text, tool| text.replace(tool, "TOOL"));
            let text = caches
                .iter()
                .fold(text, |text, cache| text.replace(cache, "CACHE"));
            for bad in ["rm ", "sudo", "curl", "wget", "/tmp", "~/", "$HOME"] {
                assert!(!text.contains(bad), "{name}: {bad:?} in {text:?}");
            }
            // Every redirection into a file goes under the demo's output
            // directory, or to the step's own output file (in its bundle).
            for (i, _) in text.match_indices('>') {
                let target = text[i + 1..].trim_start();
                if target.starts_with('&') || target.starts_with('>') {
                    continue;
                }
                assert!(
                    target.starts_with("\"$DEMO_OUT/")
                        || target.starts_with("CACHE/")
                        || target.starts_with("/dev/")
                        || target.starts_with("\"$ORCH_OUTPUT\"")
                        || cmd.cwd.is_some(),
                    "{name}: writes outside $DEMO_OUT: {text:?}"
                );
            }
        }
    }
}

#[test]
fn hello_is_one_stage_of_one_step_saying_hello() {
    let wf = example("hello.yaml");
    assert_eq!(wf.stages.len(), 1);
    assert_eq!(wf.stages[0].steps.len(), 1);
    assert_eq!(wf.stages[0].steps[0].commands[0].argv, ["echo", "hello"]);
}

#[test]
fn coding_agent_installs_a_cached_agent_without_network_behind_an_approval_and_tests_that_send_back(
) {
    let wf = example("coding-agent.yaml");
    let agent = stage(&wf, "agent");
    assert_eq!(agent.mounts, ["~/.cache/orch/agents/wheels-2.4.6"]);
    assert!(!agent.network, "the agent reaches only the model gateway");
    // The agent's environment is kept in the cache, installed from the
    // mounted wheels on a miss.
    assert_eq!(agent.cache.len(), 1);
    assert_eq!(agent.cache[0].path, "~/agent");
    assert_eq!(agent.cache[0].key, "mini-swe-agent-2.4.6");
    assert_eq!(agent.steps.len(), 2);
    let install = agent.steps[0].commands[0].argv.join(" ");
    for want in [
        "--no-index",
        "--find-links",
        "~/agent/.installed",
        "/usr/bin/python3",
    ] {
        assert!(install.contains(want), "{want}: {install}");
    }
    assert!(!agent.steps[0].approve);
    // Feedback (a rejection's, the tests') reaches the last step, the agent.
    assert!(agent.steps[1].approve);
    let run = agent.steps[1].commands[0].argv.join(" ");
    for want in [
        "$ORCH_FEEDBACK",
        "~/agent/bin/python -m minisweagent",
        "--model openai/smol",
        "$ORCH_BUNDLE_DIR",
    ] {
        assert!(run.contains(want), "{want}: {run}");
    }
    let tests = stage(&wf, "tests");
    assert_eq!(tests.needs, ["agent"]);
    assert!(!tests.network);
    match &tests.on_failure {
        Some(StageOnFailure::SendBack(s)) => {
            assert_eq!(s.retry_stage, "agent");
            assert_eq!(s.feedback, FeedbackKind::LogTail);
            assert_eq!(s.rounds(), 2);
        }
        other => panic!("tests should send a failure back to the agent: {other:?}"),
    }
}

#[test]
fn diamond_forks_after_a_and_joins_at_d() {
    let wf = example("diamond.yaml");
    let p = plan(&wf).unwrap();
    assert_eq!(p.layers, [vec!["a"], vec!["b", "c"], vec!["d"]]);
    assert_eq!(p.critical_path, ["a", "c", "d"]);
}

#[test]
fn failing_has_a_failing_stage_its_blocked_dependent_and_an_independent_stage() {
    let wf = example("failing.yaml");
    let check = stage(&wf, "check");
    let last = check.steps[0]
        .commands
        .iter()
        .find(|c| c.argv.join(" ").contains("exit 1"));
    assert!(last.is_some(), "check should exit 1");
    assert_eq!(stage(&wf, "publish").needs, ["check"]);
    let docs = stage(&wf, "docs");
    assert!(docs.needs.is_empty());
    assert!(wf.stages.iter().all(|s| !s.needs.contains(&docs.id)));
}

#[test]
fn the_demo_is_a_diamond_ish_pipeline_whose_critical_path_runs_through_build() {
    let wf = example("demo.yaml");
    assert!(wf.stages.len() >= 6, "{} stages", wf.stages.len());
    let p = plan(&wf).unwrap();
    assert_eq!(p.layers[0], ["fetch"]);
    assert_eq!(p.parallelism, [1, 3, 1, 1]);
    assert_eq!(p.critical_path, ["fetch", "build", "package", "report"]);
    // Every stage has an estimate, so the critical path is meaningful.
    assert!(wf.stages.iter().all(|s| s.estimate.is_some()));
    assert!(p.critical_path_ms > 0);
    // Multi-step stages, stage env, and a shell step using `run:`.
    assert!(wf.stages.iter().any(|s| s.steps.len() > 1));
    assert!(wf.stages.iter().any(|s| !s.env.is_empty()));
    assert!(commands(&wf).any(|(step, c)| step.shell && c.run.is_some()));
    // It makes its progress visible, writes its output under out/ in the
    // run's worktree, and commits some of it at checkpoints.
    assert!(commands(&wf).any(|(_, c)| c.argv.first().is_some_and(|p| p == "sleep")));
    assert_eq!(wf.env["DEMO_OUT"], "out");
    assert!(wf
        .stages
        .iter()
        .flat_map(|s| &s.steps)
        .any(|s| !s.artifacts.is_empty()));
    // Its sleeps (as commands; `build` also sleeps in its shell loop) stay short.
    let sleep_s: f64 = commands(&wf)
        .filter(|(_, c)| c.argv.first().is_some_and(|p| p == "sleep"))
        .map(|(_, c)| c.argv[1].parse::<f64>().unwrap())
        .sum();
    assert!(sleep_s < 3.0, "{sleep_s}s of sleeping");
}

#[test]
fn a_stage_chooses_its_sandbox_and_older_payloads_default_to_process() {
    use orchestrator_core::api::{JobSpec, Manifest, SandboxSpec};
    use orchestrator_core::spec::SandboxKind;

    let yaml = "name: w\nstages:\n  - id: a\n    sandbox: namespace\n    network: true\n    steps:\n      - commands: [{argv: [\"true\"]}]\n  - id: b\n    steps:\n      - commands: [{argv: [\"true\"]}]\n";
    let wf = parse_workflow(yaml, None).unwrap();
    assert_eq!(wf.stages[0].sandbox, Some(SandboxKind::Namespace));
    assert!(wf.stages[0].network);
    assert_eq!(wf.stages[1].sandbox, None);
    assert!(!wf.stages[1].network);
    assert!(parse_workflow(&yaml.replace("namespace", "docker"), None).is_err());

    // A job or a manifest written before the field existed.
    let mut job = serde_json::to_value(JobSpec::default()).unwrap();
    job.as_object_mut().unwrap().remove("sandbox");
    let job: JobSpec = serde_json::from_value(job).unwrap();
    assert_eq!(job.sandbox, SandboxSpec::default());
    assert_eq!(job.sandbox.kind, None, "the agent's default then applies");
    let manifest = serde_json::json!({
        "run_id": "r", "stage_id": "s", "step": 0, "step_name": null, "attempt": 1,
        "job_id": 1, "agent_id": "a", "hostname": null, "started_at_ms": 0,
        "ended_at_ms": 0, "success": true, "error": null, "error_class": null,
        "commands": []
    });
    let manifest: Manifest = serde_json::from_value(manifest).unwrap();
    assert_eq!(manifest.sandbox, SandboxKind::Process);
    assert_eq!(manifest.limits, None, "older bundles recorded no limits");
}

#[test]
fn a_jobs_model_key_never_shows_in_debug_output() {
    let job = orchestrator_core::api::JobSpec {
        api_key: Some(orchestrator_core::api::ApiKey("orch-job-7-s3cret".into())),
        ..Default::default()
    };
    assert!(!format!("{job:?}").contains("s3cret"));
    // On the wire it is the plain string the step gets.
    let wire = serde_json::to_value(&job).unwrap();
    assert_eq!(wire["api_key"], "orch-job-7-s3cret");
}
