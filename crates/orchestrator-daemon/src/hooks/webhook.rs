//! Plain webhooks: every event, as its JSON payload, POSTed to each
//! configured URL and signed so the receiver can check it came from this
//! daemon and was not altered: `X-Orch-Signature-256: sha256=<hex>` is the
//! HMAC-SHA256 of the exact body under the webhook secret (the scheme GitHub
//! uses, so existing receivers' verification code fits).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::deliver::Prepared;
use super::HumanEvent;

/// The `X-Orch-Signature-256` value for `body`: `sha256=` and the lowercase
/// hex HMAC-SHA256 of the body under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(body);
    let hex: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The POST that delivers `ev` to `url`.
pub(crate) fn request(url: &str, secret: &[u8], ev: &HumanEvent) -> Prepared {
    // A struct of strings and integers always serializes.
    let body = serde_json::to_vec(&ev.cleaned()).unwrap_or_default();
    Prepared {
        url: url.to_owned(),
        headers: vec![
            ("x-orch-signature-256", signature(secret, &body)),
            ("x-orch-event", ev.event.as_str().to_owned()),
            ("x-orch-delivery", ev.seq.to_string()),
        ],
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_known_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
