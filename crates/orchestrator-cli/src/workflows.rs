//! `orch workflows`: the catalog of the projects the daemon watches (their
//! `.orchestrator/workflows/`), with each file's last reload error; and the
//! lines `orch up` prints about them at start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use orchestrator_core::api::WorkflowView;

use crate::client::Client;
use crate::view::{self, Output};

#[derive(clap::Args)]
pub struct WorkflowsArgs {
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
}

pub async fn list(a: WorkflowsArgs, client: &Client) -> Result<ExitCode> {
    let list = client.workflows().await?;
    match a.output {
        Output::Json => view::json(&list)?,
        Output::Text => print!("{}", table(&list)),
    }
    Ok(ExitCode::SUCCESS)
}

fn short(hash: Option<&str>) -> String {
    hash.map_or_else(|| "-".to_owned(), |h| h.chars().take(12).collect())
}

/// The catalog as a table; a file whose last reload failed gets its error
/// under it, saying what is kept.
pub fn table(list: &[WorkflowView]) -> String {
    if list.is_empty() {
        return "no workflows: the daemon watches no project with workflow files (`orch up --project DIR`, files in DIR/.orchestrator/workflows/)\n".into();
    }
    let now = orchestrator_host::now_ms();
    let mut out = format!(
        "{:<20} {:<12} {:>10}  {:<7} FILE\n",
        "WORKFLOW", "SHA256", "LOADED", "STATE"
    );
    for w in list {
        let loaded = w.loaded_at_ms.map_or_else(
            || "-".into(),
            |t| format!("{} ago", view::duration(now - t)),
        );
        let state = match (&w.hash, &w.error) {
            (_, None) => "ok",
            (Some(_), Some(_)) => "stale",
            (None, Some(_)) => "invalid",
        };
        out.push_str(&format!(
            "{:<20} {:<12} {:>10}  {:<7} {}\n",
            w.name,
            short(w.hash.as_deref()),
            loaded,
            state,
            w.file
        ));
        if let Some(e) = &w.error {
            let kept = if w.hash.is_some() {
                "the last reload failed; runs use the definition loaded before"
            } else {
                "not loaded"
            };
            out.push_str(&format!("  {kept}:\n"));
            for line in e.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

/// What `orch up` and `orch daemon` say at start about the watched projects.
pub fn banner(projects: &[PathBuf], list: &[WorkflowView]) {
    if projects.is_empty() {
        return;
    }
    for p in projects {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let dir = p.display().to_string();
        let mine: Vec<&WorkflowView> = list.iter().filter(|w| w.project_dir == dir).collect();
        let names: Vec<String> = mine
            .iter()
            .filter(|w| w.hash.is_some())
            .map(|w| w.name.clone())
            .collect();
        eprintln!(
            "watching {} for workflows: {}",
            p.join(orchestrator_daemon::catalog::WORKFLOWS_DIR)
                .display(),
            if names.is_empty() {
                "none yet".to_owned()
            } else {
                names.join(", ")
            }
        );
        for w in mine.iter().filter(|w| w.error.is_some()) {
            eprintln!(
                "  {} is not valid: {}",
                w.file,
                w.error.as_deref().unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, hash: Option<&str>, error: Option<&str>) -> WorkflowView {
        WorkflowView {
            project_dir: "/p".into(),
            name: name.into(),
            file: format!("/p/.orchestrator/workflows/{name}.yaml"),
            hash: hash.map(str::to_owned),
            loaded_at_ms: hash.map(|_| orchestrator_host::now_ms()),
            error: error.map(str::to_owned),
            inputs: Default::default(),
        }
    }

    #[test]
    fn table_says_what_is_kept() {
        let t = table(&[
            view("good", Some("0123456789abcdef"), None),
            view("stale", Some("fedcba9876543210"), Some("bad: line 3")),
            view("broken", None, Some("bad: line 1")),
        ]);
        assert!(t.contains("0123456789ab "), "{t}");
        assert!(
            t.contains(
                "the last reload failed; runs use the definition loaded before:\n    bad: line 3"
            ),
            "{t}"
        );
        assert!(t.contains("not loaded:\n    bad: line 1"), "{t}");
        assert!(table(&[]).starts_with("no workflows"));
    }
}
