//! Agent credentials: one token per agent name, kept only as its SHA-256.
//! A name with a row here is bound: only its own, unrevoked token may
//! register, claim, heartbeat or complete under it. Revoking keeps the row,
//! so a revoked name does not fall back to being anyone's.

use orchestrator_core::api::{check_agent_name, AgentTokenView};
use orchestrator_core::machine::AgentState;
use orchestrator_core::Actor;
use orchestrator_core::AgentId;
use sha2::{Digest, Sha256};

use super::tx::Ctx;
use crate::db::{params, Conn, Optional};
use crate::{Result, StoreError};

/// What an agent token starts with, so a leaked one is recognisable.
const PREFIX: &str = "orch_agent_";

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh token: 256 bits from the OS. Unlike ids, a credential never falls
/// back to a weaker source.
fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| StoreError::open("no random source for an agent token", e.to_string()))?;
    Ok(format!(
        "{PREFIX}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

fn key(name: &str) -> String {
    format!("token:{name}")
}

/// Issues NAME's token. With `replace`, a live token of NAME is revoked by
/// the new one (the daemon's own local agent gets a fresh one each start);
/// without it, a live one is refused, so an admin never cuts off a running
/// agent by mistake.
pub fn issue(ctx: &mut Ctx<'_>, name: &str, replace: bool, actor: &Actor) -> Result<String> {
    check_agent_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let before: Option<Option<i64>> = ctx
        .conn
        .prepare_cached("SELECT revoked_at FROM agent_tokens WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    if let (Some(None), false) = (before, replace) {
        return Err(StoreError::Conflict(format!(
            "agent {name:?} already has a token; revoke it first (`orch agent-token revoke {name}`) to issue another"
        )));
    }
    let token = new_token()?;
    ctx.conn
        .prepare_cached(
            "INSERT INTO agent_tokens (name, token_hash, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash,
                 created_at = excluded.created_at, revoked_at = NULL",
        )?
        .execute(params![name, hash(&token), ctx.now])?;
    let from = before.map(|r| {
        if r.is_some() {
            AgentState::TokenRevoked
        } else {
            AgentState::TokenActive
        }
    });
    ctx.transition(
        key(name),
        None,
        from,
        AgentState::TokenActive,
        format!("agent token issued for {name}"),
        actor,
    )?;
    Ok(token)
}

/// Revokes NAME's token: refused at once from then on.
pub fn revoke(ctx: &mut Ctx<'_>, name: &str, actor: &Actor) -> Result<AgentTokenView> {
    let row: Option<(i64, Option<i64>)> = ctx
        .conn
        .prepare_cached("SELECT created_at, revoked_at FROM agent_tokens WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((created_at_ms, revoked)) = row else {
        return Err(StoreError::NotFound {
            what: "agent token",
            id: name.to_owned(),
        });
    };
    if revoked.is_some() {
        return Err(StoreError::Conflict(format!(
            "the token of agent {name:?} is already revoked"
        )));
    }
    ctx.conn
        .prepare_cached("UPDATE agent_tokens SET revoked_at = ?2 WHERE name = ?1")?
        .execute(params![name, ctx.now])?;
    ctx.transition(
        key(name),
        None,
        Some(AgentState::TokenActive),
        AgentState::TokenRevoked,
        format!("agent token of {name} revoked"),
        actor,
    )?;
    Ok(AgentTokenView {
        name: name.to_owned(),
        created_at_ms,
        revoked_at_ms: Some(ctx.now),
    })
}

fn view(r: &crate::db::Row<'_>) -> crate::db::Result<AgentTokenView> {
    Ok(AgentTokenView {
        name: r.get(0)?,
        created_at_ms: r.get(1)?,
        revoked_at_ms: r.get(2)?,
    })
}

pub fn list(c: &Conn) -> Result<Vec<AgentTokenView>> {
    Ok(
        c.prepare_cached("SELECT name, created_at, revoked_at FROM agent_tokens ORDER BY name")?
            .query_map([], view)?
            .collect::<crate::db::Result<_>>()?,
    )
}

/// The credential `token` is, if it is one (revoked or not).
pub fn owner(c: &Conn, token: &str) -> Result<Option<AgentTokenView>> {
    Ok(c.prepare_cached(
        "SELECT name, created_at, revoked_at FROM agent_tokens WHERE token_hash = ?1",
    )?
    .query_row([hash(token)], view)
    .optional()?)
}

/// Whether NAME is bound to a credential.
pub fn bound(c: &Conn, name: &str) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM agent_tokens WHERE name = ?1")?
            .query_row([name], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// The name agent `agent_id` registered under, and whether it is bound.
pub fn agent_name(c: &Conn, agent_id: &AgentId) -> Result<Option<(String, bool)>> {
    let name: Option<String> = c
        .prepare_cached("SELECT name FROM agents WHERE id = ?1")?
        .query_row([agent_id], |r| r.get(0))
        .optional()?;
    match name {
        Some(n) => {
            let b = bound(c, &n)?;
            Ok(Some((n, b)))
        }
        None => Ok(None),
    }
}
