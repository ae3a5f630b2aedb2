//! One-time credentials (signed action links, dashboard login tickets,
//! logged-out sessions) remembered as spent in `spent_credentials` until
//! they would have expired anyway, so a restarted daemon refuses them too.
//! A link's record is written in the same transaction as what it did.

use crate::db::{params, Conn, Optional};
use orchestrator_core::Entity;
use orchestrator_core::RunId;

use super::tx::Ctx;
use crate::{Credential, LinkTarget, LinkUse, Refused, Result, Revocations, StoreError};

/// The row that holds the time before which every dashboard session and
/// ticket is void.
const EPOCH: (&str, &str) = ("sessions_before", "*");

/// Records `id` as spent; refused when it was spent before.
pub fn spend(ctx: &mut Ctx<'_>, kind: Credential, id: &str, expires_at_ms: i64) -> Result<()> {
    // Records past their credential's expiry guard nothing: the expiry does.
    ctx.conn
        .prepare_cached("DELETE FROM spent_credentials WHERE expires_at < ?1 AND kind <> ?2")?
        .execute(params![ctx.now, EPOCH.0])?;
    let earlier: Option<i64> = ctx
        .conn
        .prepare_cached("SELECT spent_at FROM spent_credentials WHERE kind = ?1 AND id = ?2")?
        .query_row(params![kind.as_str(), id], |r| r.get(0))
        .optional()?;
    if let Some(at_ms) = earlier {
        return Err(StoreError::Refused(Refused::Used { at_ms }));
    }
    ctx.conn
        .prepare_cached(
            "INSERT INTO spent_credentials (kind, id, expires_at, spent_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![kind.as_str(), id, expires_at_ms, ctx.now])?;
    Ok(())
}

/// Refuses a link whose request is no longer its entity's latest.
pub fn check_round(ctx: &mut Ctx<'_>, run_id: &RunId, link: &LinkUse) -> Result<()> {
    round_is_latest(ctx.conn, run_id, link)
}

/// Why `link` would be refused now (used before, or its request is no
/// longer the latest), without spending it: what its page says before the
/// human clicks.
pub fn refusal(conn: &Conn, run_id: &RunId, link: &LinkUse) -> Result<Option<Refused>> {
    let used: Option<i64> = conn
        .prepare_cached("SELECT spent_at FROM spent_credentials WHERE kind = ?1 AND id = ?2")?
        .query_row(params![Credential::Link.as_str(), link.id], |r| r.get(0))
        .optional()?;
    if let Some(at_ms) = used {
        return Ok(Some(Refused::Used { at_ms }));
    }
    match round_is_latest(conn, run_id, link) {
        Ok(()) => Ok(None),
        Err(StoreError::Refused(why)) => Ok(Some(why)),
        Err(e) => Err(e),
    }
}

fn round_is_latest(conn: &Conn, run_id: &RunId, link: &LinkUse) -> Result<()> {
    let (entity, key, what) = match &link.target {
        LinkTarget::Stage(stage) => (
            Entity::Stage,
            format!("{run_id}/{stage}"),
            format!("stage {stage} of run {run_id}"),
        ),
        LinkTarget::Question(id) => {
            let stage: String = conn
                .prepare_cached("SELECT stage_id FROM questions WHERE id = ?1 AND run_id = ?2")?
                .query_row(params![id, run_id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    what: "question",
                    id: id.to_string(),
                })?;
            (
                Entity::Question,
                format!("{run_id}/{stage}/{id}"),
                format!("question {id} of run {run_id}"),
            )
        }
    };
    let latest: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(seq) FROM transitions WHERE run_id = ?1 AND entity = ?2 AND entity_id = ?3",
        )?
        .query_row(params![run_id, entity.as_str(), key], |r| r.get(0))?;
    if latest != Some(link.round) {
        return Err(StoreError::Refused(Refused::Superseded { what }));
    }
    Ok(())
}

/// Voids every session and ticket made at or before `at_ms`.
pub fn revoke_sessions(ctx: &mut Ctx<'_>, at_ms: i64) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO spent_credentials (kind, id, expires_at, spent_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (kind, id) DO UPDATE SET
                 expires_at = MAX(spent_credentials.expires_at, excluded.expires_at),
                 spent_at = MAX(spent_credentials.spent_at, excluded.spent_at)",
        )?
        .execute(params![EPOCH.0, EPOCH.1, at_ms])?;
    Ok(())
}

/// The sessions ended before their time.
pub fn revocations(conn: &Conn, now_ms: i64) -> Result<Revocations> {
    let before_ms = conn
        .prepare_cached("SELECT spent_at FROM spent_credentials WHERE kind = ?1 AND id = ?2")?
        .query_row(params![EPOCH.0, EPOCH.1], |r| r.get(0))
        .optional()?;
    let sessions = conn
        .prepare_cached(
            "SELECT id, expires_at FROM spent_credentials WHERE kind = ?1 AND expires_at > ?2",
        )?
        .query_map(params![Credential::Session.as_str(), now_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<crate::db::Result<_>>()?;
    Ok(Revocations {
        before_ms,
        sessions,
    })
}
