//! The models the daemon's configuration declares, and the checks that
//! refuse a bad declaration before anything starts. Errors name the file,
//! the model and the field.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::{DurationSpec, SizeSpec};

/// The file the daemon reads: a list of models under `models:`, and how
/// the fabric shares memory and slots among them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFile {
    #[serde(default)]
    pub models: Vec<ModelSpec>,
    /// What the daemon's own machine lends to the models it runs.
    #[serde(default)]
    pub local: LocalHost,
    /// How long a resident model with waiting requests keeps its memory
    /// against another model's more urgent ones (hysteresis: models that do
    /// not fit together take turns about this long instead of reloading at
    /// every request). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<DurationSpec>,
    /// A waiting request gains one priority level per this much waiting,
    /// as jobs do. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aging: Option<DurationSpec>,
}

impl ModelsFile {
    pub fn switch_ms(&self) -> u64 {
        self.switch.map_or(10_000, |d| d.as_millis())
    }

    pub fn aging_ms(&self) -> u64 {
        self.aging.map_or(1_000, |d| d.as_millis()).max(1)
    }
}

/// Memory the daemon's machine lends to models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalHost {
    /// RAM for `on: ram` models; default half of the machine's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<SizeSpec>,
    /// Memory of each GPU for `on: gpu` models, by index; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<SizeSpec>,
}

/// One model the fabric may serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// What requests and stages call it: `[a-z0-9._-]+`.
    pub name: String,
    /// How to run it: exactly one of `llama_cpp` or `external`, written as
    /// a map with that one key.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub runtime: Runtime,
    /// What one instance holds while it is resident; required above 0 for
    /// `llama_cpp`, ignored (and 0 by default) for `external`.
    #[serde(default)]
    pub memory: SizeSpec,
    /// Which memory `memory` is counted in.
    #[serde(default)]
    pub on: MemoryKind,
    /// Where instances may run.
    #[serde(default)]
    pub placement: Placement,
    /// Requests one instance serves at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Stop an instance idle this long; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<DurationSpec>,
}

fn default_concurrency() -> u32 {
    1
}

/// How a model is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Runtime {
    /// A llama.cpp server the fabric starts with this model file.
    LlamaCpp {
        model: PathBuf,
        #[serde(default = "default_ctx")]
        ctx: u32,
        #[serde(default = "default_threads")]
        threads: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extra_args: Vec<String>,
    },
    /// An OpenAI-compatible server someone else runs; it holds no memory here.
    External {
        url: String,
        /// The environment variable holding the API key, if it needs one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
    },
}

fn default_ctx() -> u32 {
    4096
}

fn default_threads() -> u32 {
    4
}

impl Runtime {
    /// Whether the fabric starts and stops this model's processes (and so
    /// counts its memory); external models are always "resident".
    pub fn is_managed(&self) -> bool {
        matches!(self, Runtime::LlamaCpp { .. })
    }
}

/// The memory a model's footprint is counted in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    #[default]
    Ram,
    Gpu,
}

/// Where a model's instances may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Agent names or labels; empty means the daemon's own machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// GPU indices it may use (for `on: gpu`); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
}

impl Placement {
    /// Whether an agent with this name and these labels may host the
    /// model. An empty list allows only the daemon's machine, passed as
    /// `is_daemon_host`.
    pub fn allows(&self, agent: &str, labels: &[String], is_daemon_host: bool) -> bool {
        if self.agents.is_empty() {
            return is_daemon_host;
        }
        self.agents
            .iter()
            .any(|a| a == agent || labels.iter().any(|l| l == a))
    }
}

/// Why a models file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{field}: {message}", model.as_ref().map(|m| format!("model {m:?}: ")).unwrap_or_default())]
pub struct FabricConfigError {
    pub file: String,
    /// The model at fault, when the file parsed far enough to name one.
    pub model: Option<String>,
    pub field: String,
    pub message: String,
}

/// Reads and checks a models file (YAML; JSON is YAML too): the models alone.
pub fn parse_models(text: &str, file: &str) -> Result<Vec<ModelSpec>, FabricConfigError> {
    parse_models_file(text, file).map(|f| f.models)
}

/// Reads and checks a models file, with its memory and timing settings.
pub fn parse_models_file(text: &str, file: &str) -> Result<ModelsFile, FabricConfigError> {
    let err = |model: Option<&str>, field: &str, message: String| FabricConfigError {
        file: file.to_owned(),
        model: model.map(str::to_owned),
        field: field.to_owned(),
        message,
    };
    if text.trim().is_empty() {
        return Ok(ModelsFile::default());
    }
    let parsed: ModelsFile = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        err(None, "models", format!("{at}{e}"))
    })?;
    let mut seen = HashSet::new();
    for m in &parsed.models {
        check_model(m).map_err(|(field, message)| err(Some(&m.name), field, message))?;
        if !seen.insert(m.name.as_str()) {
            return Err(err(
                Some(&m.name),
                "name",
                "declared twice; expected each model name once".into(),
            ));
        }
    }
    if parsed.local.ram.is_some_and(|r| r.as_mib() == 0) {
        return Err(err(
            None,
            "local.ram",
            "0; expected a size above 0 such as 8G".into(),
        ));
    }
    if let Some(n) = parsed.local.gpus.iter().position(|g| g.as_mib() == 0) {
        return Err(err(
            None,
            &format!("local.gpus[{n}]"),
            "0; expected the GPU's memory such as 24G".into(),
        ));
    }
    Ok(parsed)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn check_model(m: &ModelSpec) -> Result<(), (&'static str, String)> {
    if !valid_name(&m.name) {
        return Err((
            "name",
            format!(
                "{:?} is not a valid name; expected lowercase letters, digits, '.', '_' or '-'",
                m.name
            ),
        ));
    }
    if m.concurrency < 1 {
        return Err(("concurrency", "0; expected at least 1".into()));
    }
    match &m.runtime {
        Runtime::LlamaCpp {
            model,
            ctx,
            threads,
            ..
        } => {
            if model.as_os_str().is_empty() {
                return Err((
                    "runtime.llama_cpp.model",
                    "empty; expected a model file".into(),
                ));
            }
            if *ctx == 0 {
                return Err(("runtime.llama_cpp.ctx", "0; expected at least 1".into()));
            }
            if *threads == 0 {
                return Err(("runtime.llama_cpp.threads", "0; expected at least 1".into()));
            }
            if m.memory.as_mib() == 0 {
                return Err(("memory", "0; expected a size above 0 such as 4G".into()));
            }
        }
        Runtime::External { url, api_key_env } => {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() && !host.starts_with('/') => {}
                _ => {
                    return Err((
                        "runtime.external.url",
                        format!("{url:?}; expected an http:// or https:// URL with a host"),
                    ))
                }
            }
            if api_key_env.as_deref() == Some("") {
                return Err((
                    "runtime.external.api_key_env",
                    "empty; expected the name of an environment variable".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
models:
  - name: qwen-7b
    runtime:
      llama_cpp: { model: /models/qwen.gguf, ctx: 8192, threads: 8, extra_args: ["--flash-attn"] }
    memory: 6G
    on: gpu
    placement: { agents: [gpu-box], gpus: [0] }
    concurrency: 4
    idle_stop: 10m
  - name: remote.gpt
    runtime:
      external: { url: "https://api.example.com/v1", api_key_env: EXAMPLE_KEY }
"#;

    fn one(body: &str) -> String {
        format!("models:\n  - {body}\n")
    }

    fn fail(text: &str) -> FabricConfigError {
        parse_models(text, "models.yaml").unwrap_err()
    }

    #[test]
    fn reads_both_runtimes() {
        let ms = parse_models(GOOD, "models.yaml").unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].memory, SizeSpec::from_mib(6 * 1024));
        assert_eq!(ms[0].on, MemoryKind::Gpu);
        assert_eq!(ms[0].concurrency, 4);
        assert_eq!(ms[0].idle_stop, Some(DurationSpec::from_secs(600)));
        assert!(ms[0].runtime.is_managed());
        assert!(!ms[1].runtime.is_managed());
        assert_eq!(ms[1].concurrency, 1);
        assert_eq!(ms[1].on, MemoryKind::Ram);
        // Round trip through JSON.
        let json = serde_json::to_string(&ms).unwrap();
        let back: Vec<ModelSpec> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ms);
    }

    #[test]
    fn the_local_budget_and_timings_are_read_and_checked() {
        let f = parse_models_file(
            "local: {ram: 512M, gpus: [24G]}\nswitch: 2s\naging: 500ms\nmodels: []\n",
            "m.yaml",
        )
        .unwrap();
        assert_eq!(f.local.ram, Some(SizeSpec::from_mib(512)));
        assert_eq!(f.local.gpus, vec![SizeSpec::from_mib(24 * 1024)]);
        assert_eq!((f.switch_ms(), f.aging_ms()), (2_000, 500));
        let d = parse_models_file("models: []\n", "m.yaml").unwrap();
        assert_eq!(
            (d.local.ram, d.switch_ms(), d.aging_ms()),
            (None, 10_000, 1_000)
        );
        let e = parse_models_file("local: {ram: 0}\n", "m.yaml").unwrap_err();
        assert_eq!((e.model, e.field.as_str()), (None, "local.ram"));
        let e = parse_models_file("local: {gpus: [8G, 0]}\n", "m.yaml").unwrap_err();
        assert_eq!(e.field, "local.gpus[1]");
        let e = parse_models_file("local: {vram: 8G}\n", "m.yaml").unwrap_err();
        assert!(e.message.contains("vram"), "{e}");
    }

    #[test]
    fn empty_file_declares_nothing() {
        assert_eq!(parse_models("  \n", "m.yaml").unwrap(), vec![]);
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = "models:\n  - {name: a, runtime: {external: {url: 'http://x'}}, memory: 0}\n  - {name: a, runtime: {external: {url: 'http://y'}}, memory: 0}\n";
        let e = fail(text);
        assert_eq!(e.model.as_deref(), Some("a"));
        assert_eq!(e.field, "name");
        assert!(
            e.to_string().starts_with("models.yaml: model \"a\": name:"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["Qwen", "a b", "x/y", "''"] {
            let e = fail(&one(&format!(
                "{{name: {bad}, runtime: {{external: {{url: 'http://x'}}}}, memory: 0}}"
            )));
            assert_eq!(e.field, "name", "{bad}: {e}");
        }
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let e = fail(&one(
            "{name: a, runtime: {llama_cpp: {model: a.gguf}}, memory: 1G, concurrency: 0}",
        ));
        assert_eq!(
            (e.model.as_deref(), e.field.as_str()),
            (Some("a"), "concurrency")
        );
        assert!(e.message.contains("at least 1"));
    }

    #[test]
    fn zero_memory_is_refused_for_local_models() {
        let e = fail(&one(
            "{name: a, runtime: {llama_cpp: {model: a.gguf}}, memory: 0}",
        ));
        assert_eq!(e.field, "memory");
    }

    #[test]
    fn url_scheme_must_be_http() {
        for bad in ["ftp://x", "x.com", "http://", "https:///v1"] {
            let e = fail(&one(&format!(
                "{{name: a, runtime: {{external: {{url: '{bad}'}}}}, memory: 0}}"
            )));
            assert_eq!(e.field, "runtime.external.url", "{bad}");
            assert!(e.message.contains(bad));
        }
    }

    #[test]
    fn exactly_one_runtime() {
        let both = fail(&one(
            "{name: a, runtime: {llama_cpp: {model: a.gguf}, external: {url: 'http://x'}}, memory: 1G}",
        ));
        assert_eq!(both.field, "models");
        let none = fail(&one("{name: a, memory: 1G}"));
        assert!(none.message.contains("runtime"), "{none}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = fail(&one(
            "{name: a, runtime: {external: {url: 'http://x'}}, memory: 0, concurency: 2}",
        ));
        assert!(e.message.contains("concurency"), "{e}");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn placement_by_name_label_or_daemon() {
        let p = Placement {
            agents: vec!["gpu".into(), "box-1".into()],
            gpus: vec![],
        };
        assert!(p.allows("box-1", &[], false));
        assert!(p.allows("box-2", &["gpu".into()], false));
        assert!(!p.allows("box-3", &["cpu".into()], true));
        let daemon = Placement::default();
        assert!(daemon.allows("daemon", &[], true));
        assert!(!daemon.allows("box-1", &[], false));
    }
}
