//! How a browser gets in: a login with the admin token, or a short-lived
//! link. The link carries a ticket (`t1.EXP.NONCE.MAC`) in its fragment, so
//! it never reaches a server log or a `Referer`; the page trades it once for
//! a session token (`ui1.EXP.MAC`) that the API takes as an admin token until
//! it expires. Both are HMAC-SHA256 under the daemon's dashboard key, so a
//! restarted daemon with the same key still honours its sessions.
//!
//! A ticket is single-use: the nonces redeemed are remembered until the
//! ticket would have expired anyway.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a link printed by `orch up` or `orch dashboard` works.
pub const TICKET_TTL_MS: i64 = 10 * 60 * 1000;
/// How long a browser stays logged in through a link.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;

/// Why a ticket was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed ticket: expected the part after `#ticket=` of a dashboard link")]
    Malformed,
    #[error("this link is not from this daemon (bad signature); ask for a new one with `orch dashboard`")]
    BadSignature,
    #[error("this link expired; ask for a new one with `orch dashboard`")]
    Expired,
    #[error("this link was already used; ask for a new one with `orch dashboard`")]
    Used,
}

/// Mints and checks tickets and sessions.
pub struct Sessions {
    key: Vec<u8>,
    /// Redeemed ticket nonces and when their tickets expire.
    used: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// With a key kept by the caller (the data directory's
    /// `dashboard.secret`), or a fresh one for this process alone.
    pub fn new(key: Option<Vec<u8>>) -> Sessions {
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
            used: Mutex::new(HashMap::new()),
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

    /// A ticket for one login, valid [`TICKET_TTL_MS`] from `now_ms`.
    pub fn ticket(&self, now_ms: i64) -> (String, i64) {
        let mut nonce = [0u8; 12];
        if let Err(e) = getrandom::fill(&mut nonce) {
            tracing::warn!(error = %e, "no randomness for a dashboard ticket's nonce");
        }
        let exp = now_ms + TICKET_TTL_MS;
        let nonce = hex(&nonce);
        let mac = self.mac(&format!("ticket.{exp}.{nonce}"));
        (format!("t1.{exp}.{nonce}.{mac}"), exp)
    }

    /// Trades a ticket for a session token and its expiry; a ticket works once.
    pub fn redeem(&self, ticket: &str, now_ms: i64) -> Result<(String, i64), TicketError> {
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
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            used.retain(|_, e| *e > now_ms);
            if used.insert(nonce.to_owned(), exp).is_some() {
                return Err(TicketError::Used);
            }
        }
        Ok(self.session(now_ms))
    }

    /// A session token valid [`SESSION_TTL_MS`] from `now_ms`.
    pub fn session(&self, now_ms: i64) -> (String, i64) {
        let exp = now_ms + SESSION_TTL_MS;
        let mac = self.mac(&format!("session.{exp}"));
        (format!("ui1.{exp}.{mac}"), exp)
    }

    /// Whether `token` is a session of this key that has not expired.
    pub fn is_session(&self, token: &str, now_ms: i64) -> bool {
        let mut parts = token.splitn(3, '.');
        let (Some("ui1"), Some(exp), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(exp_ms) = exp.parse::<i64>() else {
            return false;
        };
        self.verify(&format!("session.{exp_ms}"), mac) && exp_ms > now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_gives_one_session_that_expires() {
        let s = Sessions::new(Some(b"key".to_vec()));
        let (ticket, exp) = s.ticket(1_000);
        assert_eq!(exp, 1_000 + TICKET_TTL_MS);
        let (session, until) = s.redeem(&ticket, 2_000).unwrap();
        assert_eq!(until, 2_000 + SESSION_TTL_MS);
        assert!(s.is_session(&session, 3_000));
        assert!(!s.is_session(&session, until));
        assert_eq!(s.redeem(&ticket, 2_500), Err(TicketError::Used));
    }

    #[test]
    fn tickets_and_sessions_of_another_key_or_tampered_are_refused() {
        let a = Sessions::new(Some(b"a".to_vec()));
        let b = Sessions::new(Some(b"b".to_vec()));
        let (ticket, exp) = a.ticket(0);
        assert_eq!(b.redeem(&ticket, 1), Err(TicketError::BadSignature));
        let longer = ticket.replacen(&exp.to_string(), &(exp + 1_000_000).to_string(), 1);
        assert_eq!(a.redeem(&longer, 1), Err(TicketError::BadSignature));
        assert_eq!(a.redeem(&ticket, exp), Err(TicketError::Expired));
        assert_eq!(a.redeem("nonsense", 1), Err(TicketError::Malformed));
        assert_eq!(a.redeem("t1.x.y.z", 1), Err(TicketError::Malformed));
        let (session, _) = a.session(0);
        assert!(!b.is_session(&session, 1));
        assert!(!a.is_session(&session.replace("ui1.", "ui2."), 1));
        assert!(!a.is_session("ui1.99999999999999.00", 1));
    }

    #[test]
    fn a_fresh_key_is_random() {
        let (a, b) = (Sessions::new(None), Sessions::new(None));
        let (session, _) = a.session(0);
        assert!(a.is_session(&session, 1));
        assert!(!b.is_session(&session, 1));
    }
}
