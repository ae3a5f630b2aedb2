//! A step's place in git: the run's worktree it runs in, what humans said
//! that it must see (files in the worktree and variables), the loop's
//! `until` check, and the checkpoint commit after it succeeds.

use std::path::{Path, PathBuf};

use orchestrator_core::api::{ArtifactRecord, CheckpointMade, Handoff, JobSpec};

use super::Failure;
use crate::git::{self, CheckpointRequest, GitError, RunWorktree};

/// Where the orchestrator keeps its own files in a run's tree: manifests
/// and what humans handed a stage.
pub const ORCH_DIR: &str = ".orch";

/// A git failure as the step's failure: a project that is not (or no longer)
/// a usable repository is the workflow's problem; the rest is the machine's.
fn git_failure(what: &str, e: GitError) -> Failure {
    let message = format!("{what}: {e}");
    match e {
        GitError::NotARepository { .. }
        | GitError::EmptyRepository { .. }
        | GitError::UnknownRef { .. }
        | GitError::NotACommit { .. }
        | GitError::InvalidGlob { .. }
        | GitError::InvalidPath { .. }
        | GitError::SymlinkEscapes { .. }
        | GitError::InvalidRunId { .. } => Failure::task(message),
        _ => Failure::infra(message),
    }
}

/// The run's worktree (made if this machine has none yet), canonicalized.
pub(super) async fn open_worktree(
    project: &Path,
    spec: &JobSpec,
) -> Result<(RunWorktree, PathBuf), Failure> {
    let (project, run_id, base) = (
        project.to_owned(),
        spec.run_id.clone(),
        spec.base_commit.clone(),
    );
    let wt = tokio::task::spawn_blocking(move || git::ensure_worktree(&project, &run_id, &base))
        .await
        .map_err(|e| Failure::infra(format!("preparing the run's worktree: {e}")))?
        .map_err(|e| git_failure("preparing the run's worktree", e))?;
    let canonical = wt
        .path
        .canonicalize()
        .map_err(|e| Failure::infra(format!("the run's worktree {}: {e}", wt.path.display())))?;
    Ok((wt, canonical))
}

/// Writes what humans said into the worktree and returns the variables that
/// point at it. Files a previous step was handed are removed, so a step never
/// mistakes old feedback for its own.
pub(super) fn hand_over(worktree: &Path, spec: &JobSpec) -> Result<Vec<(String, String)>, Failure> {
    let dir = worktree.join(ORCH_DIR).join(&spec.stage_id);
    let feedback = dir.join("feedback.md");
    let answers = dir.join("answers.md");
    let io = |e: std::io::Error| {
        Failure::infra(format!(
            "writing the step's handoff in {}: {e}",
            dir.display()
        ))
    };
    // The handoff directory comes from the run's tree: a step (or the
    // project) may have made it a symlink, through which the agent would
    // write outside the worktree.
    for d in [worktree.join(ORCH_DIR), dir.clone()] {
        if std::fs::symlink_metadata(&d).is_ok_and(|m| m.file_type().is_symlink()) {
            let target = std::fs::read_link(&d).unwrap_or_default();
            return Err(Failure::task(format!(
                "{} is a symlink to {}; the orchestrator's directory in the worktree must be a plain directory inside it",
                d.display(),
                target.display()
            )));
        }
    }
    for f in [&feedback, &answers] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    let mut env = Vec::new();
    let Some(h) = &spec.handoff else {
        return Ok(env);
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    if let Some(said) = &h.feedback {
        std::fs::write(&feedback, feedback_text(h, &said.text, &said.by)).map_err(io)?;
        env.push(("ORCH_FEEDBACK".to_owned(), said.text.clone()));
        env.push((
            "ORCH_FEEDBACK_FILE".to_owned(),
            feedback.to_string_lossy().into_owned(),
        ));
    }
    if let Some(last) = h.answers.last() {
        let mut text = String::new();
        for a in &h.answers {
            text.push_str(&format!(
                "## Question {}: {}\n\n{}\n\n(answered by {})\n\n",
                a.question_id, a.question, a.answer, a.by
            ));
        }
        std::fs::write(&answers, text).map_err(io)?;
        env.push(("ORCH_ANSWER".to_owned(), last.answer.clone()));
        env.push(("ORCH_QUESTION".to_owned(), last.question.clone()));
        env.push(("ORCH_QUESTION_ID".to_owned(), last.question_id.to_string()));
        env.push((
            "ORCH_ANSWER_FILE".to_owned(),
            answers.to_string_lossy().into_owned(),
        ));
    }
    Ok(env)
}

fn feedback_text(h: &Handoff, text: &str, by: &str) -> String {
    format!(
        "# Feedback on step {}\n\nRejected by {by}:\n\n{text}\n",
        h.for_step
    )
}

/// Where a step's manifest lives in the run's tree.
pub fn manifest_path(spec: &JobSpec) -> String {
    format!("{ORCH_DIR}/{}/step-{:03}.json", spec.stage_id, spec.step)
}

/// Commits the step's artifacts and manifest on the run branch.
pub(super) async fn commit(
    project: &Path,
    worktree: RunWorktree,
    spec: &JobSpec,
    job_id: i64,
    manifest: Vec<u8>,
) -> Result<CheckpointMade, Failure> {
    let name = spec
        .step_name
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let iteration = if spec.until.is_some() || spec.iteration > 0 {
        format!(", iteration {}", spec.iteration + 1)
    } else {
        String::new()
    };
    let message = format!(
        "orch: {} step {}{name}{iteration} checkpoint\n\nOrch-Run: {}\nOrch-Stage: {}\nOrch-Step: {}\nOrch-Attempt: {}\nOrch-Job: {job_id}\n",
        spec.stage_id, spec.step, spec.run_id, spec.stage_id, spec.step, spec.attempt
    );
    let (project, run_id, artifacts) = (
        project.to_owned(),
        spec.run_id.clone(),
        spec.artifacts.clone(),
    );
    let extra = vec![(manifest_path(spec), manifest)];
    let made = tokio::task::spawn_blocking(move || {
        git::checkpoint(
            &project,
            &worktree,
            &CheckpointRequest {
                run_id: &run_id,
                artifacts: &artifacts,
                extra: &extra,
                message: &message,
            },
        )
    })
    .await
    .map_err(|e| Failure::infra(format!("checkpoint commit: {e}")))?
    .map_err(|e| git_failure("checkpoint commit", e))?;
    Ok(CheckpointMade {
        commit: made.commit,
        artifacts: made
            .artifacts
            .into_iter()
            .map(|a| ArtifactRecord {
                path: a.path,
                size: a.size,
                sha256: a.sha256,
            })
            .collect(),
    })
}
