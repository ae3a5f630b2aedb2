//! How a browser gets in: a login with the admin token, or a short-lived
//! link. The link carries a ticket (`t1.EXP.NONCE.MAC`) in its fragment, so
//! it never reaches a server log or a `Referer`; the page trades it once for
//! a session token (`ui2.ID.ISSUED.EXP.MAC`) that the API takes as an admin
//! token until it expires, except that it cannot make links or revoke
//! sessions. Both are HMAC-SHA256 under the daemon's dashboard key, so a
//! restarted daemon with the same key still honours its sessions.
//!
//! What a restart must not forget is in the store: a redeemed ticket's
//! nonce (so a ticket works once), the ids of sessions logged out, and the
//! time before which the admin revoked every session and ticket. This
//! module keeps a copy of the revocations to check every request against;
//! the daemon loads it from the store at start and refreshes it, so a
//! revocation made by another daemon on the same database reaches it too.
//!
//! A session lives at most the configured maximum from its login, however
//! long its token says: lowering the maximum shortens sessions already out.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use orchestrator_store::Revocations;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a link printed by `orch up` or `orch dashboard` works.
pub const TICKET_TTL_MS: i64 = 10 * 60 * 1000;
/// The default longest life of a session.
pub const SESSION_MAX_MS: u64 = 12 * 60 * 60 * 1000;

/// Why a ticket was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed ticket: expected the part after `#ticket=` of a dashboard link")]
    Malformed,
    #[error("this link is not from this daemon (bad signature); ask for a new one with `orch dashboard`")]
    BadSignature,
    #[error("this link expired; ask for a new one with `orch dashboard`")]
    Expired,
    #[error("this link was revoked with every session (`orch dashboard --revoke`); ask for a new one with `orch dashboard`")]
    Revoked,
    #[error("this link was already used; ask for a new one with `orch dashboard`")]
    Used,
}

/// A valid ticket, to be spent in the store before it buys a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub nonce: String,
    pub expires_at_ms: i64,
}

/// A live session, as its token proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub expires_at_ms: i64,
}

#[derive(Debug)]
struct Revoked {
    /// Sessions and tickets made at or before this time are void.
    before_ms: i64,
    /// Logged-out sessions, with when each would have expired.
    sessions: HashMap<String, i64>,
}

/// Mints and checks tickets and sessions.
pub struct Sessions {
    key: Vec<u8>,
    max_ms: i64,
    revoked: Mutex<Revoked>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("max_ms", &self.max_ms)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nonce() -> String {
    let mut n = [0u8; 12];
    if let Err(e) = getrandom::fill(&mut n) {
        tracing::warn!(error = %e, "no randomness for a dashboard nonce");
    }
    hex(&n)
}

impl Sessions {
    /// With a key kept by the caller (the data directory's
    /// `dashboard.secret`), or a fresh one for this process alone; sessions
    /// last at most `max_ms`.
    pub fn new(key: Option<Vec<u8>>, max_ms: u64) -> Sessions {
        let key = key.filter(|k| !k.is_empty()).unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            // Without the OS's randomness a key would be guessable; a
            // zero key still signs, and only this process's links use it.
            if let Err(e) = getrandom::fill(&mut k) {
                tracing::error!(error = %e, "no randomness for the dashboard key");
            }
            k
        });
        Sessions {
            key,
            max_ms: i64::try_from(max_ms).unwrap_or(i64::MAX),
            revoked: Mutex::new(Revoked {
                before_ms: i64::MIN,
                sessions: HashMap::new(),
            }),
        }
    }

    fn mac(&self, what: &str) -> String {
        // HMAC takes a key of any length.
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(what.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    fn verify(&self, what: &str, mac: &str) -> bool {
        let want = self.mac(what);
        want.len() == mac.len()
            && want
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }

    fn revoked(&self) -> std::sync::MutexGuard<'_, Revoked> {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in what the store says was revoked (at start, and again
    /// later for what other daemons revoked); never forgets a revocation.
    pub fn load(&self, r: &Revocations, now_ms: i64) {
        let mut revoked = self.revoked();
        revoked.before_ms = revoked.before_ms.max(r.before_ms.unwrap_or(i64::MIN));
        revoked.sessions.retain(|_, exp| *exp > now_ms);
        for (id, exp) in &r.sessions {
            revoked.sessions.insert(id.clone(), *exp);
        }
    }

    /// Ends one session (its record in the store is the caller's).
    pub fn revoke(&self, s: &Session) {
        self.revoked()
            .sessions
            .insert(s.id.clone(), s.expires_at_ms);
    }

    /// Ends every session and ticket made at or before `at_ms`.
    pub fn revoke_before(&self, at_ms: i64) {
        let mut revoked = self.revoked();
        revoked.before_ms = revoked.before_ms.max(at_ms);
    }

    /// A ticket for one login, valid [`TICKET_TTL_MS`] from `now_ms`.
    pub fn ticket(&self, now_ms: i64) -> (String, i64) {
        let exp = now_ms + TICKET_TTL_MS;
        let nonce = nonce();
        let mac = self.mac(&format!("ticket.{exp}.{nonce}"));
        (format!("t1.{exp}.{nonce}.{mac}"), exp)
    }

    /// Checks a ticket; spending it (so that it works once) is the caller's.
    pub fn check_ticket(&self, ticket: &str, now_ms: i64) -> Result<Ticket, TicketError> {
        let parts: Vec<&str> = ticket.trim().split('.').collect();
        let [version, exp, nonce, mac] = parts[..] else {
            return Err(TicketError::Malformed);
        };
        let exp: i64 = exp.parse().map_err(|_| TicketError::Malformed)?;
        if version != "t1" || nonce.is_empty() {
            return Err(TicketError::Malformed);
        }
        if !self.verify(&format!("ticket.{exp}.{nonce}"), mac) {
            return Err(TicketError::BadSignature);
        }
        if exp <= now_ms {
            return Err(TicketError::Expired);
        }
        if exp - TICKET_TTL_MS <= self.revoked().before_ms {
            return Err(TicketError::Revoked);
        }
        Ok(Ticket {
            nonce: nonce.to_owned(),
            expires_at_ms: exp,
        })
    }

    /// A new session, made at `now_ms`, and its expiry.
    pub fn session(&self, now_ms: i64) -> (String, i64) {
        let exp = now_ms.saturating_add(self.max_ms);
        let id = nonce();
        let mac = self.mac(&format!("session.{id}.{now_ms}.{exp}"));
        (format!("ui2.{id}.{now_ms}.{exp}.{mac}"), exp)
    }

    /// The session `token` proves, if it is one of this key that is live:
    /// not expired, not older than the maximum, not revoked.
    pub fn session_of(&self, token: &str, now_ms: i64) -> Option<Session> {
        let parts: Vec<&str> = token.split('.').collect();
        let ["ui2", id, issued, exp, mac] = parts[..] else {
            return None;
        };
        let issued: i64 = issued.parse().ok()?;
        let exp: i64 = exp.parse().ok()?;
        if !self.verify(&format!("session.{id}.{issued}.{exp}"), mac) {
            return None;
        }
        let end = exp.min(issued.saturating_add(self.max_ms));
        let revoked = self.revoked();
        if end <= now_ms || issued <= revoked.before_ms || revoked.sessions.contains_key(id) {
            return None;
        }
        Some(Session {
            id: id.to_owned(),
            expires_at_ms: exp,
        })
    }

    /// Whether `token` is a live session of this key.
    pub fn is_session(&self, token: &str, now_ms: i64) -> bool {
        self.session_of(token, now_ms).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_ticket_checks_and_its_session_expires() {
        let s = Sessions::new(Some(b"key".to_vec()), HOUR);
        let (ticket, exp) = s.ticket(1_000);
        assert_eq!(exp, 1_000 + TICKET_TTL_MS);
        assert_eq!(s.check_ticket(&ticket, 2_000).unwrap().expires_at_ms, exp);
        let (session, until) = s.session(2_000);
        assert_eq!(until, 2_000 + HOUR as i64);
        assert!(s.is_session(&session, 3_000));
        assert!(!s.is_session(&session, until));
    }

    #[test]
    fn tickets_and_sessions_of_another_key_or_tampered_are_refused() {
        let a = Sessions::new(Some(b"a".to_vec()), HOUR);
        let b = Sessions::new(Some(b"b".to_vec()), HOUR);
        let (ticket, exp) = a.ticket(0);
        assert_eq!(b.check_ticket(&ticket, 1), Err(TicketError::BadSignature));
        let longer = ticket.replacen(&exp.to_string(), &(exp + 1_000_000).to_string(), 1);
        assert_eq!(a.check_ticket(&longer, 1), Err(TicketError::BadSignature));
        assert_eq!(a.check_ticket(&ticket, exp), Err(TicketError::Expired));
        assert_eq!(a.check_ticket("nonsense", 1), Err(TicketError::Malformed));
        assert_eq!(a.check_ticket("t1.x.y.z", 1), Err(TicketError::Malformed));
        let (session, exp) = a.session(0);
        assert!(!b.is_session(&session, 1));
        assert!(!a.is_session(&session.replace("ui2.", "ui1."), 1));
        let later = session.replacen(&format!(".{exp}."), &format!(".{}.", exp + 1), 1);
        assert!(!a.is_session(&later, 1), "a session cannot extend itself");
    }

    #[test]
    fn a_session_lives_no_longer_than_the_maximum_now_in_force() {
        let long = Sessions::new(Some(b"k".to_vec()), 10 * HOUR);
        let (session, _) = long.session(0);
        let short = Sessions::new(Some(b"k".to_vec()), HOUR);
        assert!(short.is_session(&session, HOUR as i64 - 1));
        assert!(!short.is_session(&session, HOUR as i64));
    }

    #[test]
    fn revocations_end_sessions_and_tickets_made_before_them() {
        let s = Sessions::new(Some(b"k".to_vec()), HOUR);
        let (one, _) = s.session(10);
        let (two, _) = s.session(10);
        s.revoke(&s.session_of(&one, 11).unwrap());
        assert!(!s.is_session(&one, 12) && s.is_session(&two, 12));
        let (ticket, _) = s.ticket(20);
        s.load(
            &Revocations {
                before_ms: Some(20),
                sessions: Vec::new(),
            },
            21,
        );
        assert!(!s.is_session(&two, 22), "revoked with every session");
        assert!(!s.is_session(&one, 22), "loading forgets no revocation");
        assert_eq!(s.check_ticket(&ticket, 22), Err(TicketError::Revoked));
        let (three, _) = s.session(30);
        assert!(s.is_session(&three, 31));
    }

    #[test]
    fn a_fresh_key_is_random() {
        let (a, b) = (Sessions::new(None, HOUR), Sessions::new(None, HOUR));
        let (session, _) = a.session(0);
        assert!(a.is_session(&session, 1));
        assert!(!b.is_session(&session, 1));
    }
}
