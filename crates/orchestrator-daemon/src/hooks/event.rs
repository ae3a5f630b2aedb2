//! Human-facing events: the few transitions a person wants to hear about
//! (an approval is requested, a question asked or answered, a checkpoint
//! committed, a stage failed, a run finished), each with the exact `orch`
//! commands that answer it. Derived from the transitions log by a pure
//! function, so a replay of the log after a restart yields the same events
//! with the same `seq` — which is what lets receivers drop duplicates.

use orchestrator_core::api::QuestionState;
use orchestrator_core::api::{self, InboxKind};
use orchestrator_core::quote;
use orchestrator_core::RunId;
use orchestrator_core::{Entity, RunState, StageState, Transition};
use serde::{Deserialize, Serialize};

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A stage holds after a step until a human approves or rejects it.
    ApprovalRequested,
    /// A step asked a human a question.
    QuestionAsked,
    /// A human (or the daemon) answered a question.
    QuestionAnswered,
    /// A step's artifacts were committed on the run's branch.
    Checkpoint,
    /// A stage failed: it waits for a human to retry, skip or abort it, or
    /// (with `on_failure: fail`) it ended failed.
    Failure,
    /// A run succeeded, failed or was cancelled.
    RunFinished,
}

impl EventKind {
    /// Every kind, for tests and documentation.
    pub const ALL: &'static [EventKind] = &[
        EventKind::ApprovalRequested,
        EventKind::QuestionAsked,
        EventKind::QuestionAnswered,
        EventKind::Checkpoint,
        EventKind::Failure,
        EventKind::RunFinished,
    ];

    /// The name in payloads and in the `X-Orch-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::QuestionAsked => "question_asked",
            EventKind::QuestionAnswered => "question_answered",
            EventKind::Checkpoint => "checkpoint",
            EventKind::Failure => "failure",
            EventKind::RunFinished => "run_finished",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event as webhooks receive it (the JSON body is this struct).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanEvent {
    pub event: EventKind,
    /// The transition's position in the log: unique, increasing, and the
    /// same on every redelivery.
    pub seq: i64,
    pub run_id: RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_id: Option<String>,
    /// For question events: the id `orch answer` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<i64>,
    pub entity_id: String,
    pub from: Option<String>,
    pub to: String,
    /// Why, in words. For a question or a failure these are the step's
    /// own (`reason_from` says whose), cleaned to one line of at most 500
    /// characters: a receiver shows them as a quote, never as its own.
    pub reason: String,
    /// Whose words `reason` is: `step`, `human` or `orchestrator`.
    pub reason_from: ReasonFrom,
    pub actor: String,
    pub at_ms: i64,
    /// The exact commands a human types to respond; empty when nothing is
    /// to be answered.
    pub answer_with: Vec<String>,
    /// For a question with fixed choices: the choices. The transition does
    /// not carry them; whoever knows them (the question's row) fills them in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// For an approval: the files its checkpoint changed (`git diff
    /// --stat`, the orchestrator's manifests left out). The file names are
    /// the step's: cleaned and capped like its other text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffstat: Option<String>,
}

/// Who wrote an event's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonFrom {
    /// A step (its question, its error): untrusted, to be quoted.
    Step,
    /// A human's answer.
    Human,
    Orchestrator,
}

impl HumanEvent {
    /// The event as a webhook receives it: the step's text in `reason` and
    /// `choices` folded to one line and cut to 500 characters.
    pub fn cleaned(&self) -> HumanEvent {
        use orchestrator_core::quote::{one_line, MAX_QUOTED};
        let mut ev = self.clone();
        ev.reason = one_line(&ev.reason, MAX_QUOTED);
        ev.choices = ev.choices.iter().map(|c| one_line(c, MAX_QUOTED)).collect();
        ev.diffstat = ev
            .diffstat
            .map(|d| orchestrator_core::quote::clean(&d, 4 * MAX_QUOTED));
        ev
    }
}

/// The human event a committed transition makes, if any.
pub fn human_event(t: &Transition) -> Option<HumanEvent> {
    use orchestrator_core::State as S;
    let kind = match (t.from, t.to) {
        (_, S::Stage(StageState::AwaitingApproval)) => EventKind::ApprovalRequested,
        (_, S::Stage(StageState::AwaitingDecision)) => EventKind::Failure,
        // A human aborted it: they know; the run's end follows.
        (Some(S::Stage(StageState::AwaitingDecision)), S::Stage(StageState::Failed)) => {
            return None
        }
        (_, S::Stage(StageState::Failed)) => EventKind::Failure,
        (None, S::Question(QuestionState::Open)) => EventKind::QuestionAsked,
        (_, S::Question(QuestionState::Answered)) => EventKind::QuestionAnswered,
        (_, S::Checkpoint(_)) => EventKind::Checkpoint,
        (_, S::Run(RunState::Succeeded | RunState::Failed | RunState::Cancelled)) => {
            EventKind::RunFinished
        }
        _ => return None,
    };
    // Entity ids are `run`, `run/stage`, `run/stage/N`; a question's is its
    // number. The run id comes from the row when it has one.
    let stage = t.stage();
    let run_id = t
        .run_id
        .clone()
        .or_else(|| stage.map(|k| RunId::from(k.run_id)))
        .unwrap_or_else(|| RunId::from(&t.entity_id));
    let stage_id = stage
        .filter(|k| k.run_id == run_id.as_str())
        .map(|k| k.stage_id.to_owned());
    let question_id = match t.entity {
        Entity::Question => t.entity_id.rsplit('/').next().and_then(|p| p.parse().ok()),
        _ => None,
    };
    let mut ev = HumanEvent {
        event: kind,
        seq: t.seq,
        run_id,
        stage_id,
        question_id,
        entity_id: t.entity_id.clone(),
        from: t.from.map(|s| s.as_str().to_owned()),
        to: t.to.as_str().to_owned(),
        reason: t.reason.clone(),
        reason_from: match kind {
            EventKind::QuestionAsked | EventKind::Failure => ReasonFrom::Step,
            EventKind::QuestionAnswered => ReasonFrom::Human,
            _ => ReasonFrom::Orchestrator,
        },
        actor: t.actor.to_string(),
        at_ms: t.at_ms,
        answer_with: Vec::new(),
        choices: Vec::new(),
        diffstat: None,
    };
    ev.answer_with = answer_commands(&ev);
    Some(ev)
}

/// The commands that answer `ev`: approve or reject a held stage, answer a
/// question (one command per choice when it has choices), retry, skip or
/// abort a failed stage.
pub fn answer_commands(ev: &HumanEvent) -> Vec<String> {
    let stage = ev.stage_id.as_deref().unwrap_or_default();
    match (ev.event, ev.stage_id.is_some(), ev.question_id) {
        (EventKind::ApprovalRequested, true, _) => {
            api::answer_commands(InboxKind::Approval, &ev.run_id, stage, None)
        }
        (EventKind::Failure, true, _) if ev.to == "awaiting_decision" => {
            api::answer_commands(InboxKind::Decision, &ev.run_id, stage, None)
        }
        // A choice that is not one clean line would make a command span
        // lines, or carry characters a terminal acts on: it is answered by
        // its link or on the dashboard instead.
        (EventKind::QuestionAsked, _, Some(q))
            if ev.choices.iter().all(|c| quote::is_one_line(c, 200)) =>
        {
            api::answer_commands(
                InboxKind::Question,
                &ev.run_id,
                stage,
                Some((q, &ev.choices)),
            )
        }
        (EventKind::QuestionAsked, _, Some(q)) => {
            let clean: Vec<String> = ev
                .choices
                .iter()
                .filter(|c| quote::is_one_line(c, 200))
                .cloned()
                .collect();
            if clean.is_empty() {
                Vec::new()
            } else {
                api::answer_commands(InboxKind::Question, &ev.run_id, stage, Some((q, &clean)))
            }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::State;

    fn t(entity: Entity, id: &str, from: Option<&str>, to: &str, reason: &str) -> Transition {
        Transition {
            seq: 42,
            entity,
            entity_id: id.into(),
            run_id: Some("r1".into()),
            from: from.map(|s| State::parse(entity, s).expect("a state of the entity")),
            to: State::parse(entity, to).expect("a state of the entity"),
            reason: reason.into(),
            actor: orchestrator_core::Actor::agent("a1"),
            at_ms: 1_000,
        }
    }

    fn kind(tr: &Transition) -> Option<EventKind> {
        human_event(tr).map(|e| e.event)
    }

    #[test]
    fn each_kind_comes_from_its_transition() {
        use EventKind as K;
        let cases = [
            (
                t(
                    Entity::Stage,
                    "r1/build",
                    Some("running"),
                    "awaiting_approval",
                    "",
                ),
                K::ApprovalRequested,
            ),
            (
                t(Entity::Question, "r1/plan/7", None, "open", "Which db?"),
                K::QuestionAsked,
            ),
            (
                t(Entity::Question, "7", Some("open"), "answered", "sqlite"),
                K::QuestionAnswered,
            ),
            (
                t(
                    Entity::Checkpoint,
                    "r1/build/2",
                    None,
                    "committed",
                    "commit 1a2b3c",
                ),
                K::Checkpoint,
            ),
            (
                t(
                    Entity::Stage,
                    "r1/build",
                    Some("running"),
                    "failed",
                    "exit 1",
                ),
                K::Failure,
            ),
        ];
        for (tr, want) in &cases {
            assert_eq!(kind(tr), Some(*want), "{tr:?}");
        }
        for end in ["succeeded", "failed", "cancelled"] {
            assert_eq!(
                kind(&t(Entity::Run, "r1", Some("running"), end, "")),
                Some(K::RunFinished)
            );
        }
    }

    #[test]
    fn other_transitions_make_no_event() {
        let quiet = [
            t(Entity::Stage, "r1/b", Some("queued"), "running", ""),
            t(Entity::Stage, "r1/b", Some("running"), "succeeded", ""),
            t(Entity::Stage, "r1/b", Some("pending"), "blocked", ""),
            t(Entity::Stage, "r1/b", Some("running"), "cancelled", ""),
            t(Entity::Run, "r1", None, "running", "submitted"),
            t(Entity::Run, "r1", Some("running"), "paused", ""),
            t(Entity::Job, "5", Some("leased"), "failed", ""),
            t(Entity::Lease, "5", Some("active"), "revoked", ""),
            t(Entity::Agent, "a1", None, "registered", ""),
            // Re-opened, not asked: only a creation is a new question.
            t(Entity::Question, "7", Some("answered"), "open", ""),
            t(Entity::Question, "7", Some("open"), "closed", ""),
        ];
        for tr in &quiet {
            assert_eq!(kind(tr), None, "{tr:?}");
        }
    }

    #[test]
    fn an_event_names_its_run_stage_and_question() {
        let e = human_event(&t(Entity::Question, "r1/plan/7", None, "open", "Which db?")).unwrap();
        assert_eq!(
            (e.run_id.as_str(), e.stage_id.as_deref(), e.question_id),
            ("r1", Some("plan"), Some(7))
        );
        assert_eq!(e.reason, "Which db?");
        let e = human_event(&t(Entity::Question, "9", None, "open", "?")).unwrap();
        assert_eq!((e.stage_id, e.question_id), (None, Some(9)));
        let mut run_end = t(Entity::Run, "r1", Some("running"), "failed", "");
        run_end.run_id = None;
        let e = human_event(&run_end).unwrap();
        assert_eq!((e.run_id.as_str(), e.stage_id), ("r1", None));
        let e = human_event(&t(Entity::Checkpoint, "r1/build/3", None, "committed", "c")).unwrap();
        assert_eq!(e.stage_id.as_deref(), Some("build"));
    }

    #[test]
    fn answer_with_lists_the_commands_that_answer() {
        let approval = human_event(&t(
            Entity::Stage,
            "r1/build",
            Some("running"),
            "awaiting_approval",
            "",
        ))
        .unwrap();
        assert_eq!(
            approval.answer_with,
            [
                "orch approve r1 build",
                "orch reject r1 build --feedback \"<what to change>\""
            ]
        );
        let mut q = human_event(&t(Entity::Question, "r1/plan/7", None, "open", "?")).unwrap();
        assert_eq!(q.answer_with, ["orch answer r1 7 \"<your answer>\""]);
        q.choices = vec!["sqlite".into(), "it's postgres".into()];
        assert_eq!(
            answer_commands(&q),
            [
                "orch answer r1 7 sqlite",
                r"orch answer r1 7 'it'\''s postgres'"
            ]
        );
        for tr in [
            t(Entity::Stage, "r1/b", Some("running"), "failed", ""),
            t(Entity::Run, "r1", Some("running"), "succeeded", ""),
            t(Entity::Question, "7", Some("open"), "answered", ""),
        ] {
            assert!(human_event(&tr).unwrap().answer_with.is_empty());
        }
    }

    #[test]
    fn the_payload_has_the_documented_fields() {
        let e = human_event(&t(Entity::Stage, "r1/b", Some("running"), "failed", "x")).unwrap();
        let v = serde_json::to_value(&e).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "actor",
                "answer_with",
                "at_ms",
                "entity_id",
                "event",
                "from",
                "reason",
                "reason_from",
                "run_id",
                "seq",
                "stage_id",
                "to"
            ]
        );
        assert_eq!(v["event"], "failure");
    }
}
