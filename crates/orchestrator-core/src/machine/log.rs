//! The transitions log's row, typed: which kind of entity changed, its state
//! before and after (each entity's own state type), and who caused it.
//! Stored and served as plain strings (`"queued"`, `"user:alice"`), so the
//! log's JSON and SQL keep their shape.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{JobState, LeaseEnd, RunState, StageState};
use crate::api::QuestionState;
use crate::ids::{AgentId, RunId};

/// The kind of entity a transition row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Run,
    Stage,
    Job,
    Lease,
    Agent,
    /// A question a step asked a human.
    Question,
    /// A step's checkpoint: its artifacts committed.
    Checkpoint,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Run => "run",
            Entity::Stage => "stage",
            Entity::Job => "job",
            Entity::Lease => "lease",
            Entity::Agent => "agent",
            Entity::Question => "question",
            Entity::Checkpoint => "checkpoint",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "run" => Entity::Run,
            "stage" => Entity::Stage,
            "job" => Entity::Job,
            "lease" => Entity::Lease,
            "agent" => Entity::Agent,
            "question" => Entity::Question,
            "checkpoint" => Entity::Checkpoint,
            _ => return None,
        })
    }
}

states!(
    /// The state of a lease.
    LeaseState {
        /// Its agent holds its job under it.
        Active = "active",
        /// Its job was completed under it.
        Released = "released",
        /// Its time ran out, or its agent came back as a new process.
        Expired = "expired",
        /// Its job was cancelled.
        Revoked = "revoked",
    } terminal: [Released, Expired, Revoked]
);

impl From<LeaseEnd> for LeaseState {
    fn from(end: LeaseEnd) -> Self {
        match end {
            LeaseEnd::Released => LeaseState::Released,
            LeaseEnd::Expired => LeaseState::Expired,
            LeaseEnd::Revoked => LeaseState::Revoked,
        }
    }
}

states!(
    /// What the log records of an agent: its presence and its credential.
    AgentState {
        /// It registered (first, or again as a new process).
        Registered = "registered",
        /// Heard from within the online window.
        Online = "online",
        /// Not heard from past the online window; its leases expire.
        Lost = "lost",
        /// A token was issued for its name.
        TokenActive = "active",
        /// Its token was revoked.
        TokenRevoked = "revoked",
    } terminal: []
);

states!(
    /// The state of a step's checkpoint.
    CheckpointState {
        /// Its artifacts are committed on the run's branch.
        Committed = "committed",
    } terminal: [Committed]
);

/// A state in the log, of the entity the row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Run(RunState),
    Stage(StageState),
    Job(JobState),
    Lease(LeaseState),
    Agent(AgentState),
    Question(QuestionState),
    Checkpoint(CheckpointState),
}

impl State {
    /// The name stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Run(s) => s.as_str(),
            State::Stage(s) => s.as_str(),
            State::Job(s) => s.as_str(),
            State::Lease(s) => s.as_str(),
            State::Agent(s) => s.as_str(),
            State::Question(s) => s.as_str(),
            State::Checkpoint(s) => s.as_str(),
        }
    }

    /// The entity a state belongs to.
    pub fn entity(self) -> Entity {
        match self {
            State::Run(_) => Entity::Run,
            State::Stage(_) => Entity::Stage,
            State::Job(_) => Entity::Job,
            State::Lease(_) => Entity::Lease,
            State::Agent(_) => Entity::Agent,
            State::Question(_) => Entity::Question,
            State::Checkpoint(_) => Entity::Checkpoint,
        }
    }

    /// Parses a state name of `entity`'s.
    pub fn parse(entity: Entity, s: &str) -> Option<Self> {
        Some(match entity {
            Entity::Run => State::Run(RunState::parse(s)?),
            Entity::Stage => State::Stage(StageState::parse(s)?),
            Entity::Job => State::Job(JobState::parse(s)?),
            Entity::Lease => State::Lease(LeaseState::parse(s)?),
            Entity::Agent => State::Agent(AgentState::parse(s)?),
            Entity::Question => State::Question(QuestionState::parse(s)?),
            Entity::Checkpoint => State::Checkpoint(CheckpointState::parse(s)?),
        })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for State {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for State {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

macro_rules! into_state {
    ($($t:ident => $v:ident),*) => {$(
        impl From<$t> for State {
            fn from(s: $t) -> Self {
                State::$v(s)
            }
        }
    )*};
}
into_state!(RunState => Run, StageState => Stage, JobState => Job, LeaseState => Lease,
    AgentState => Agent, QuestionState => Question, CheckpointState => Checkpoint);

/// Who caused a transition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A person, by the name their credential proves. `said` is a name they
    /// gave for themselves on a shared credential: recorded, never trusted.
    User { name: String, said: Option<String> },
    /// An agent, by its id.
    Agent(AgentId),
    /// The daemon's scheduler (queueing, placement, pre-emption, holds).
    Scheduler,
    /// The daemon's reaper (expired leases, lost agents).
    Reaper,
    /// The daemon itself (start-up, faults).
    Daemon,
    /// A name none of the above reads: kept as written (a log row from
    /// another version), never made by this one.
    Unknown(String),
}

impl Actor {
    /// A person with a proven name.
    pub fn user(name: impl Into<String>) -> Self {
        Actor::User {
            name: name.into(),
            said: None,
        }
    }

    /// An agent.
    pub fn agent(id: impl Into<AgentId>) -> Self {
        Actor::Agent(id.into())
    }

    /// Reads a stored name: what [`Actor`]'s `Display` wrote, or
    /// [`Actor::Unknown`].
    pub fn read(s: String) -> Self {
        Actor::parse(&s).unwrap_or(Actor::Unknown(s))
    }

    /// Parses what [`Actor`]'s `Display` wrote.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduler" => return Some(Actor::Scheduler),
            "reaper" => return Some(Actor::Reaper),
            "daemon" => return Some(Actor::Daemon),
            _ => {}
        }
        if let Some(id) = s.strip_prefix("agent:") {
            return (!id.is_empty()).then(|| Actor::agent(id));
        }
        let who = s.strip_prefix("user:")?;
        if let Some((name, rest)) = who.split_once(" (said: ") {
            let said = rest.strip_suffix(')')?;
            return Some(Actor::User {
                name: name.to_owned(),
                said: Some(said.to_owned()),
            });
        }
        (!who.is_empty()).then(|| Actor::user(who))
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User { name, said: None } => write!(f, "user:{name}"),
            Actor::User {
                name,
                said: Some(s),
            } => write!(f, "user:{name} (said: {s})"),
            Actor::Agent(id) => write!(f, "agent:{id}"),
            Actor::Scheduler => f.write_str("scheduler"),
            Actor::Reaper => f.write_str("reaper"),
            Actor::Daemon => f.write_str("daemon"),
            Actor::Unknown(s) => f.write_str(s),
        }
    }
}

impl PartialEq<&str> for Actor {
    fn eq(&self, other: &&str) -> bool {
        // Compared as written, without building the string.
        struct Eq<'a>(&'a str);
        impl fmt::Write for Eq<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                match self.0.strip_prefix(s) {
                    Some(rest) => {
                        self.0 = rest;
                        Ok(())
                    }
                    None => Err(fmt::Error),
                }
            }
        }
        let mut rest = Eq(other);
        fmt::write(&mut rest, format_args!("{self}")).is_ok() && rest.0.is_empty()
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Actor::read)
    }
}

/// A stage of a run, as the log names it: `run_id/stage_id` (a checkpoint
/// adds `/seq`, a question `/id`). Stage ids hold no `/` (validation refuses one), so the
/// first `/` ends the run's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StageKey<'a> {
    pub run_id: &'a str,
    pub stage_id: &'a str,
}

impl<'a> StageKey<'a> {
    pub fn new(run_id: &'a str, stage_id: &'a str) -> Self {
        StageKey { run_id, stage_id }
    }

    /// The stage an entity id names (`run/stage` or `run/stage/seq`), if any.
    pub fn parse(entity_id: &'a str) -> Option<Self> {
        let (run_id, rest) = entity_id.split_once('/')?;
        let stage_id = rest.split('/').next().filter(|s| !s.is_empty())?;
        (!run_id.is_empty()).then_some(StageKey { run_id, stage_id })
    }
}

impl fmt::Display for StageKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.run_id, self.stage_id)
    }
}

/// One row of the transitions log: every state change, with why and who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// Position in the log; strictly increasing.
    pub seq: i64,
    pub entity: Entity,
    /// The entity's id: a run id, `run_id/stage_id`, a job id, a lease id,
    /// an agent id, a question id or `run_id/stage_id/seq` of a checkpoint.
    pub entity_id: String,
    /// The run it belongs to, when it belongs to one.
    pub run_id: Option<RunId>,
    /// The state before; None for a creation.
    pub from: Option<State>,
    pub to: State,
    pub reason: String,
    pub actor: Actor,
    /// Unix time in milliseconds.
    pub at_ms: i64,
}

impl Transition {
    /// The stage the row is about: a stage's, a checkpoint's or a
    /// question's row.
    pub fn stage(&self) -> Option<StageKey<'_>> {
        match self.entity {
            Entity::Stage | Entity::Checkpoint | Entity::Question => {
                StageKey::parse(&self.entity_id)
            }
            _ => None,
        }
    }
}

/// The row as it travels, before its states are read against its entity.
#[derive(Deserialize)]
struct RawTransition {
    seq: i64,
    entity: Entity,
    entity_id: String,
    run_id: Option<RunId>,
    from: Option<String>,
    to: String,
    reason: String,
    actor: Actor,
    at_ms: i64,
}

impl<'de> Deserialize<'de> for Transition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawTransition::deserialize(d)?;
        let state = |s: &str| {
            State::parse(r.entity, s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "transition {}: {s:?} is not a state of a {}",
                    r.seq,
                    r.entity.as_str()
                ))
            })
        };
        Ok(Transition {
            seq: r.seq,
            entity: r.entity,
            from: r.from.as_deref().map(state).transpose()?,
            to: state(&r.to)?,
            entity_id: r.entity_id,
            run_id: r.run_id,
            reason: r.reason,
            actor: r.actor,
            at_ms: r.at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_reads_back_as_itself_and_only_for_its_entity() {
        let all: Vec<State> = RunState::ALL
            .iter()
            .map(|&s| State::from(s))
            .chain(StageState::ALL.iter().map(|&s| s.into()))
            .chain(JobState::ALL.iter().map(|&s| s.into()))
            .chain(LeaseState::ALL.iter().map(|&s| s.into()))
            .chain(AgentState::ALL.iter().map(|&s| s.into()))
            .chain(CheckpointState::ALL.iter().map(|&s| s.into()))
            .chain(
                [
                    QuestionState::Open,
                    QuestionState::Answered,
                    QuestionState::Closed,
                ]
                .map(State::from),
            )
            .collect();
        for s in all {
            assert_eq!(State::parse(s.entity(), s.as_str()), Some(s));
            assert!(s == s.as_str());
        }
        assert_eq!(State::parse(Entity::Run, "leased"), None);
        assert_eq!(State::parse(Entity::Job, "bogus"), None);
    }

    #[test]
    fn a_stage_key_reads_back_from_stage_and_checkpoint_ids() {
        let k = StageKey::new("r1", "build");
        assert_eq!(k.to_string(), "r1/build");
        assert_eq!(StageKey::parse("r1/build"), Some(k));
        assert_eq!(StageKey::parse("r1/build/3"), Some(k));
        for bad in ["r1", "/build", "r1/", ""] {
            assert_eq!(StageKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn actors_read_back_as_written() {
        for a in [
            Actor::user("alice"),
            Actor::User {
                name: "admin".into(),
                said: Some("bob".into()),
            },
            Actor::user("link:approve build"),
            Actor::agent("a1"),
            Actor::Scheduler,
            Actor::Reaper,
            Actor::Daemon,
        ] {
            assert_eq!(Actor::parse(&a.to_string()), Some(a.clone()), "{a}");
        }
        for bad in ["", "user:", "agent:", "root", "users:x"] {
            assert_eq!(Actor::parse(bad), None, "{bad:?}");
            assert_eq!(Actor::read(bad.into()), Actor::Unknown(bad.into()));
        }
    }

    #[test]
    fn a_transition_travels_as_strings_and_is_checked_against_its_entity() {
        let t = Transition {
            seq: 7,
            entity: Entity::Stage,
            entity_id: "r1/build".into(),
            run_id: Some("r1".into()),
            from: Some(StageState::Queued.into()),
            to: StageState::Running.into(),
            reason: "leased".into(),
            actor: Actor::agent("a1"),
            at_ms: 1,
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["from"], "queued");
        assert_eq!(json["to"], "running");
        assert_eq!(json["actor"], "agent:a1");
        let back: Transition = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, t);
        let mut wrong = json;
        wrong["to"] = "leased".into();
        let e = serde_json::from_value::<Transition>(wrong).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"leased\" is not a state of a stage"),
            "{e}"
        );
    }
}
