//! A step's place in git: the run's worktree it runs in, what humans said
//! that it must see (files in the worktree and variables), the loop's
//! `until` check, and the checkpoint commit after it succeeds.

use orchestrator_core::JobId;
use std::path::{Path, PathBuf};

use orchestrator_core::api::{ArtifactRecord, CheckpointMade, Handoff, JobSpec};

use super::Failure;
use orchestrator_host::confined::{ConfinedDir, ConfinedError};
use orchestrator_host::git::{self, CheckpointRequest, GitError, RunWorktree, StepGit};

/// Where the orchestrator keeps what humans handed a stage in the run's
/// worktree; never committed.
pub const ORCH_DIR: &str = git::RECORDS_DIR;

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
        | GitError::StepCommits { .. }
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

/// The step's own git directory, made afresh (see [`StepGit`]).
pub(super) async fn step_git(
    project: &Path,
    worktree: &RunWorktree,
    spec: &JobSpec,
    sandboxed: bool,
) -> Result<StepGit, Failure> {
    let (project, worktree, run_id, stage_id) = (
        project.to_owned(),
        worktree.clone(),
        spec.run_id.clone(),
        spec.stage_id.clone(),
    );
    tokio::task::spawn_blocking(move || {
        git::prepare_step_git(&project, &worktree, &run_id, &stage_id, sandboxed)
    })
    .await
    .map_err(|e| Failure::infra(format!("preparing the step's git: {e}")))?
    .map_err(|e| git_failure("preparing the step's git", e))
}

/// Writes what humans said into the worktree and returns the variables that
/// point at it. Files a previous step was handed are removed, so a step never
/// mistakes old feedback for its own.
pub(super) fn hand_over(worktree: &Path, spec: &JobSpec) -> Result<Vec<(String, String)>, Failure> {
    let rel = Path::new(ORCH_DIR).join(&spec.stage_id);
    let shown = worktree.join(&rel);
    // The handoff directory is in the run's tree, which steps write: it is
    // walked without following links, and its files are made afresh.
    let dir = match ConfinedDir::open(worktree, &rel, spec.handoff.is_some()) {
        Ok(dir) => dir,
        Err(e) if e.is_not_found() && spec.handoff.is_none() => return Ok(Vec::new()),
        Err(e @ (ConfinedError::NotADirectory { .. } | ConfinedError::BadName { .. })) => {
            return Err(Failure::task(format!(
                "{e}: the orchestrator's directory in the worktree must be a plain directory inside it"
            )))
        }
        Err(e) => {
            return Err(Failure::infra(format!(
                "writing the step's handoff in {}: {e}",
                shown.display()
            )))
        }
    };
    let io = |e: ConfinedError| {
        Failure::infra(format!(
            "writing the step's handoff in {}: {e}",
            shown.display()
        ))
    };
    let write = |name: &str, text: &str| -> Result<String, Failure> {
        let mut f = dir.create(name).map_err(io)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| {
            io(ConfinedError::Io {
                what: "write",
                path: dir.path().join(name),
                source: e,
            })
        })?;
        Ok(dir.path().join(name).to_string_lossy().into_owned())
    };
    for name in [FEEDBACK, ANSWERS] {
        dir.remove(name).map_err(io)?;
    }
    let mut env = Vec::new();
    let Some(h) = &spec.handoff else {
        return Ok(env);
    };
    if let Some(said) = &h.feedback {
        let path = write(FEEDBACK, &feedback_text(h, spec, &said.text, &said.by))?;
        env.push(("ORCH_FEEDBACK".to_owned(), said.text.clone()));
        env.push(("ORCH_FEEDBACK_FILE".to_owned(), path));
    }
    if let Some(last) = h.answers.last() {
        let mut text = String::new();
        for a in &h.answers {
            text.push_str(&format!(
                "## Question {}: {}\n\n{}\n\n(answered by {})\n\n",
                a.question_id, a.question, a.answer, a.by
            ));
        }
        let path = write(ANSWERS, &text)?;
        env.push(("ORCH_ANSWER".to_owned(), last.answer.clone()));
        env.push(("ORCH_QUESTION".to_owned(), last.question.clone()));
        env.push(("ORCH_QUESTION_ID".to_owned(), last.question_id.to_string()));
        env.push(("ORCH_ANSWER_FILE".to_owned(), path));
    }
    Ok(env)
}

/// The handoff's files in `.orch/<stage>/`.
const FEEDBACK: &str = "feedback.md";
const ANSWERS: &str = "answers.md";

fn feedback_text(h: &Handoff, spec: &JobSpec, text: &str, by: &str) -> String {
    let how = match &h.sent_back {
        Some(why) => format!("Sent back {why} by {by}"),
        None => format!("Rejected by {by}"),
    };
    format!(
        "# Feedback on step {} of stage {}\n\n{how}:\n\n{text}\n",
        spec.shown_step(),
        spec.stage_id
    )
}

/// Commits the step's own commits, artifacts and manifest on the run branch.
pub(super) async fn commit(
    project: &Path,
    worktree: RunWorktree,
    step_git: StepGit,
    spec: &JobSpec,
    job_id: JobId,
    manifest: Vec<u8>,
) -> Result<CheckpointMade, Failure> {
    let name = spec
        .step_name
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    // Steps from 0, as everywhere; a loop's iterations are rounds of them.
    let round = if spec.round > 1 {
        format!(", round {} ({})", spec.round, spec.round_reason)
    } else {
        String::new()
    };
    let step = spec.shown_step();
    let message = format!(
        "orch: {} step {step}{name}{round} checkpoint\n\nOrch-Run: {}\nOrch-Stage: {}\nOrch-Step: {step}\nOrch-Round: {}\nOrch-Round-Reason: {}\nOrch-Attempt: {}\nOrch-Job: {job_id}\n",
        spec.stage_id, spec.run_id, spec.stage_id, spec.round, spec.round_reason, spec.attempt
    );
    let (project, run_id, artifacts) = (
        project.to_owned(),
        spec.run_id.clone(),
        spec.artifacts.clone(),
    );
    let made = tokio::task::spawn_blocking(move || {
        git::checkpoint(
            &project,
            &worktree,
            &CheckpointRequest {
                run_id: &run_id,
                artifacts: &artifacts,
                record: &manifest,
                step_git: Some(&step_git),
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
