//! The wire types of what a human sees and answers: checkpoints and their
//! artifacts, questions, the inbox, and the approve, reject, answer,
//! retry, skip and abort requests.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, JobId, RunId};
use crate::machine::StageState;

/// One committed file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Path in the run's branch.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The checkpoint commit an agent made after a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMade {
    pub commit: String,
    pub artifacts: Vec<ArtifactRecord>,
}

/// A checkpoint as recorded: the run's N-th (1-based) commit on its branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    pub run_id: RunId,
    pub seq: u32,
    pub stage_id: String,
    pub step: u32,
    pub step_name: Option<String>,
    pub job_id: JobId,
    pub commit: String,
    pub artifacts: Vec<ArtifactRecord>,
    pub created_at_ms: i64,
}

/// A question a running step asked through `orch ask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub question: String,
    /// When given, the answer must be one of these.
    #[serde(default)]
    pub choices: Vec<String>,
}

/// Whether a question still waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionState {
    Open,
    Answered,
    /// Its stage ended before anyone answered.
    Closed,
}

impl QuestionState {
    pub fn as_str(self) -> &'static str {
        match self {
            QuestionState::Open => "open",
            QuestionState::Answered => "answered",
            QuestionState::Closed => "closed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => QuestionState::Open,
            "answered" => QuestionState::Answered,
            "closed" => QuestionState::Closed,
            _ => return None,
        })
    }
}

/// A question, asked by a step or by an input step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionView {
    pub id: i64,
    pub run_id: RunId,
    pub stage_id: String,
    pub step: u32,
    pub question: String,
    pub choices: Vec<String>,
    pub state: QuestionState,
    pub asked_at_ms: i64,
    pub answer: Option<String>,
    pub answered_by: Option<String>,
    pub answered_at_ms: Option<i64>,
    /// Whether the step that asked waits for the answer while it runs
    /// (`orch ask --wait`), holding its slot, rather than running again.
    #[serde(default)]
    pub waiting: bool,
}

/// What a running step sends its agent's endpoint (`POST /v1/ask`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepAskRequest {
    pub question: String,
    #[serde(default)]
    pub choices: Vec<String>,
    /// Forward the question now and wait for the answer inside the step
    /// (`orch ask --wait`); without it, the question is handed over when
    /// the step ends and the answer comes to the step run again.
    #[serde(default)]
    pub wait: bool,
}

/// The local endpoint's answer to a [`StepAskRequest`] without `wait`: the
/// question is kept for when the step ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepAsked {
    /// Questions this step has asked so far.
    pub asked: usize,
    /// What happens next, for the step's log.
    pub note: String,
}

/// `POST /v1/jobs/{id}/questions` (agent to daemon): a running step asks
/// and waits for the answer. `key` names this ask: sent again after a lost
/// answer, it finds the question the first one made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitAsk {
    pub agent_id: AgentId,
    pub lease_token: String,
    pub key: String,
    pub question: String,
    #[serde(default)]
    pub choices: Vec<String>,
}

/// `POST /v1/jobs/{id}/questions/{qid}/wait` and `.../withdraw` (agent to
/// daemon), and the local endpoint's `POST /v1/ask/wait` and
/// `/v1/ask/withdraw` (step to agent, which fills in the lease).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitPoll {
    #[serde(default)]
    pub agent_id: AgentId,
    #[serde(default)]
    pub lease_token: String,
    /// The question (the local endpoint's requests name it here).
    #[serde(default)]
    pub question_id: i64,
    /// Answer as soon as the question is answered or closed, or after this
    /// long (milliseconds) with it still open.
    #[serde(default)]
    pub wait_ms: u64,
}

/// Where a question a running step waits for stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitStatus {
    pub question_id: i64,
    pub state: QuestionState,
    pub asked_at_ms: i64,
    /// The answer, as the human gave it: the step prints it, never runs it.
    pub answer: Option<String>,
    pub answered_by: Option<String>,
    pub answered_at_ms: Option<i64>,
}

/// A question a step waited for while it ran, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRecord {
    pub question_id: i64,
    pub question: String,
    /// `answered`, `closed` (withdrawn: the step gave up), or `open` (the
    /// step ended while still waiting; the question closed with it).
    pub state: QuestionState,
    /// From the question reaching the daemon to the step hearing how it
    /// ended (or ending), in milliseconds.
    pub waited_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// What humans said that a step must see: a rejection's feedback, or the
/// answers to the questions its stage asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The step it is for.
    pub for_step: u32,
    #[serde(default)]
    pub feedback: Option<Said>,
    #[serde(default)]
    pub answers: Vec<Answered>,
    /// When the feedback sent the work back (rather than rejecting the
    /// step): why, e.g. `after stage test failed (round 1 of 3)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_back: Option<String>,
}

/// Free text a human gave, and who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    pub text: String,
    pub by: String,
}

/// One answered question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub question_id: i64,
    pub question: String,
    pub answer: String,
    pub by: String,
}

/// What waits for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxKind {
    Approval,
    Question,
    /// A failed stage waits to be retried, skipped or aborted.
    Decision,
}

/// One entry of `orch inbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    pub kind: InboxKind,
    pub run_id: RunId,
    pub workflow: String,
    pub stage_id: String,
    pub stage_state: StageState,
    /// The step that checkpointed (approval), asked (question) or failed
    /// (decision).
    pub step: u32,
    pub step_name: Option<String>,
    /// Since when it waits (Unix ms).
    pub since_ms: i64,
    /// The last checkpoint's commit, for an approval.
    pub commit: Option<String>,
    pub question: Option<QuestionView>,
    /// For a decision: why the stage failed (the failed attempt's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to type to answer it.
    pub answer_with: Vec<String>,
}

/// `POST /v1/runs/{id}/stages/{stage}/retry`, `.../skip`, `.../abort` and
/// `POST /v1/runs/{id}/abort`: a human's decision about a failure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// Who says they decide: a note kept beside the actor, which is the
    /// authenticated caller.
    #[serde(default)]
    pub by: Option<String>,
    /// Why, recorded with the transition.
    #[serde(default)]
    pub comment: Option<String>,
    /// Retry only: sends the work back to this stage with this feedback.
    /// The stage (succeeded, or awaiting a decision) runs its last step
    /// again with the feedback, and every stage after it that ran or waits
    /// runs again after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

/// `POST /v1/runs/{id}/stages/{stage}/approve`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Who says they approve: a note kept beside the actor, which is the
    /// authenticated caller.
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /v1/runs/{id}/stages/{stage}/reject`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    #[serde(default)]
    pub by: Option<String>,
    /// Handed to the step, which runs again.
    pub feedback: String,
}

/// `POST /v1/runs/{id}/questions/{qid}/answer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    #[serde(default)]
    pub by: Option<String>,
    pub text: String,
}

/// The commands a human types to act on a waiting stage (approve or reject
/// it) or an open question (`question`: its id and choices; one command per
/// choice when it has some). Ready to paste: words are shell-quoted.
pub fn answer_commands(
    kind: InboxKind,
    run_id: &RunId,
    stage_id: &str,
    question: Option<(i64, &[String])>,
) -> Vec<String> {
    let run = shell_quote(run_id.as_str());
    match (kind, question) {
        (InboxKind::Question, Some((id, choices))) if !choices.is_empty() => choices
            .iter()
            .map(|c| format!("orch answer {run} {id} {}", shell_quote(c)))
            .collect(),
        (InboxKind::Question, Some((id, _))) => {
            vec![format!("orch answer {run} {id} \"<your answer>\"")]
        }
        (InboxKind::Question, None) => Vec::new(),
        (InboxKind::Decision, _) => {
            let stage = shell_quote(stage_id);
            vec![
                format!("orch retry {run} {stage}"),
                format!("orch skip {run} {stage}"),
                format!("orch abort {run}"),
            ]
        }
        (InboxKind::Approval, _) => {
            let stage = shell_quote(stage_id);
            vec![
                format!("orch approve {run} {stage}"),
                format!("orch reject {run} {stage} --feedback \"<what to change>\""),
            ]
        }
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `GET /v1/runs/{id}/diff`: the change a run (or one step of it) made,
/// file by file, as a reviewer reads it before approving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDiff {
    /// The commit the change is shown from.
    pub from: String,
    /// The commit it is shown to.
    pub to: String,
    /// The files changed, by path.
    pub files: Vec<FileDiff>,
    /// Files left out past the cap on their number.
    pub files_left_out: u32,
}

/// One file's change in a [`RunDiff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiff {
    pub path: String,
    /// The path before, for a renamed file.
    pub old_path: Option<String>,
    /// `added`, `deleted`, `modified`, `renamed` or `typechange`.
    pub status: String,
    pub insertions: u32,
    pub deletions: u32,
    /// Binary content: no patch.
    pub binary: bool,
    /// The unified patch (hunks only), cut at the cap; text a step wrote.
    pub patch: String,
    /// Whether the patch was cut.
    pub truncated: bool,
}
