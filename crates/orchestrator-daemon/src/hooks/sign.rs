//! Signed one-click actions: a token that lets whoever holds it do exactly
//! one thing (approve a stage, reject it, answer a question with a given
//! text) until it expires, without an admin token. Chat messages carry them
//! as `{public_url}/v1/act/{token}` links, so a human can answer from a phone.
//!
//! A token is `base64url(JSON) "." base64url(HMAC-SHA256(key, first part))`,
//! both without padding. The JSON holds the action and its expiry (`exp`,
//! Unix milliseconds). The key is the daemon's own action key, never the
//! webhook secret: every webhook receiver knows that one, and must not be
//! able to mint actions.
//!
//! Verification checks the signature before it reads anything, in constant
//! time, then the expiry. An action names the request it answers (`round`:
//! the `seq` of the transition that asked), so a link sent for one approval
//! round cannot approve the next; the store acts on it only while that
//! transition is its entity's latest, and records the link (by the digest of
//! its signed part, [`SignedAction::id`]) as used in the same transaction.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use orchestrator_core::RunId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a human may do with one click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Approve a stage awaiting approval.
    Approve,
    /// Reject a stage awaiting approval (with feedback in `text`).
    Reject,
    /// Answer an open question with `text`.
    Answer,
    /// Retry a failed stage waiting for a decision.
    Retry,
    /// Skip a failed stage waiting for a decision.
    Skip,
    /// Abort the run of a failed stage.
    Abort,
}

/// One action a signed token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub kind: ActionKind,
    pub run_id: RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<i64>,
    /// The answer, or the rejection's feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Who the link was sent to (a chat channel and recipient): the actor
    /// its action is recorded under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The `seq` of the transition that asked (the stage's wait began, the
    /// question was asked): the one request this action answers.
    pub round: i64,
}

/// A verified token: its action, its expiry and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAction {
    pub action: Action,
    pub expires_at_ms: i64,
    /// The hex SHA-256 of the signed part: one per link, whatever encoding
    /// of its signature is presented.
    pub id: String,
}

/// What the first part of a token encodes.
#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    action: Action,
    /// Unix milliseconds after which the token is refused.
    exp: i64,
}

/// Why a token was refused. Each case is distinct so the `/v1/act` route can
/// tell a human whether to ask for a fresh link or distrust the one they have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Not two base64url parts, or the signed part is not an action.
    #[error("malformed action token: {0}")]
    Malformed(String),
    /// The signature does not match: the token was altered or signed with another key.
    #[error(
        "action token signature does not match: the link was altered or comes from another daemon"
    )]
    BadSignature,
    /// Signed by us, but too old.
    #[error("action token expired at {expired_at_ms} (Unix ms); ask for a fresh link")]
    Expired { expired_at_ms: i64 },
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed, short ones
    // padded), so `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Signs `action`, valid until `expires_at_ms` (Unix milliseconds).
pub fn sign_action(action: &Action, key: &[u8], expires_at_ms: i64) -> String {
    let claims = Claims {
        action: action.clone(),
        exp: expires_at_ms,
    };
    // Serializing a struct of strings and integers cannot fail.
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(json);
    let mut m = mac(key);
    m.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// Checks `token` against `key` at `now_ms` and returns the action it allows.
pub fn verify_action(token: &str, key: &[u8], now_ms: i64) -> Result<Action, ActionError> {
    verify_link(token, key, now_ms).map(|s| s.action)
}

/// [`verify_action`], with the token's expiry and id.
pub fn verify_link(token: &str, key: &[u8], now_ms: i64) -> Result<SignedAction, ActionError> {
    let (payload, sig) = token
        .split_once('.')
        .ok_or_else(|| ActionError::Malformed("expected PAYLOAD.SIGNATURE".into()))?;
    if sig.contains('.') {
        return Err(ActionError::Malformed("more than two parts".into()));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|e| ActionError::Malformed(format!("signature is not base64url: {e}")))?;
    let mut m = mac(key);
    m.update(payload.as_bytes());
    // Constant time: a forger learns nothing from how long a refusal takes.
    m.verify_slice(&sig)
        .map_err(|_| ActionError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| ActionError::Malformed(format!("payload is not base64url: {e}")))?;
    let claims: Claims = serde_json::from_slice(&json)
        .map_err(|e| ActionError::Malformed(format!("payload is not an action: {e}")))?;
    if now_ms >= claims.exp {
        return Err(ActionError::Expired {
            expired_at_ms: claims.exp,
        });
    }
    let id = Sha256::digest(payload.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(SignedAction {
        action: claims.action,
        expires_at_ms: claims.exp,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"action-key-for-tests";

    fn approve() -> Action {
        Action {
            kind: ActionKind::Approve,
            run_id: "r1abc".into(),
            stage_id: Some("build".into()),
            question_id: None,
            text: None,
            to: None,
            round: 3,
        }
    }

    #[test]
    fn a_signed_action_verifies_to_itself_until_it_expires() {
        let answer = Action {
            kind: ActionKind::Answer,
            run_id: "r1abc".into(),
            stage_id: Some("plan".into()),
            question_id: Some(7),
            text: Some("use sqlite, é & \"quotes\"".into()),
            to: Some("telegram/@me".into()),
            round: 9,
        };
        for a in [approve(), answer] {
            let t = sign_action(&a, KEY, 2_000);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "URL-safe: {t}"
            );
            assert_eq!(verify_action(&t, KEY, 1_999), Ok(a));
        }
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let t = sign_action(&approve(), KEY, 2_000);
        assert_eq!(
            verify_action(&t, KEY, 2_000),
            Err(ActionError::Expired {
                expired_at_ms: 2_000
            })
        );
    }

    #[test]
    fn a_tampered_token_is_refused_as_a_bad_signature() {
        let t = sign_action(&approve(), KEY, 2_000);
        let (payload, sig) = t.split_once('.').unwrap();
        // Another action under the old signature.
        let mut other = approve();
        other.stage_id = Some("deploy".into());
        let forged_payload = sign_action(&other, KEY, 2_000);
        let forged = format!("{}.{sig}", forged_payload.split_once('.').unwrap().0);
        assert_eq!(
            verify_action(&forged, KEY, 0),
            Err(ActionError::BadSignature)
        );
        // A later expiry under the old signature.
        let longer = sign_action(&approve(), KEY, 9_999_999);
        let forged = format!("{}.{sig}", longer.split_once('.').unwrap().0);
        assert_eq!(
            verify_action(&forged, KEY, 0),
            Err(ActionError::BadSignature)
        );
        // One flipped character of the signature.
        let mut s: Vec<u8> = sig.bytes().collect();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{payload}.{}", String::from_utf8(s).unwrap());
        assert_eq!(
            verify_action(&flipped, KEY, 0),
            Err(ActionError::BadSignature)
        );
        // Another daemon's key.
        assert_eq!(
            verify_action(&t, b"another key", 0),
            Err(ActionError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens_are_refused_as_malformed() {
        let t = sign_action(&approve(), KEY, 2_000);
        for bad in [
            "",
            "no-dot",
            "a.b.c",
            &format!("{t}.extra"),
            "payload.not*base64",
        ] {
            assert!(
                matches!(verify_action(bad, KEY, 0), Err(ActionError::Malformed(_))),
                "{bad:?}: {:?}",
                verify_action(bad, KEY, 0)
            );
        }
        // Correctly signed, but not an action.
        let payload = URL_SAFE_NO_PAD.encode(b"{\"exp\": 5}");
        let mut m = mac(KEY);
        m.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        assert!(matches!(
            verify_action(&format!("{payload}.{sig}"), KEY, 0),
            Err(ActionError::Malformed(_))
        ));
    }
}
