//! Ids and secrets: short random ids users can type, and lease/API secrets.

use crate::clock::now_ms;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS random source failing is not recoverable in any useful way;
    // falling back to the clock keeps ids unique enough for one machine.
    if getrandom::fill(&mut b).is_err() {
        let t = now_ms().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % t.len()] ^ (i as u8).wrapping_mul(31);
        }
    }
    b
}

/// A new id: `prefix` then 10 base-32 characters (50 random bits).
pub fn new_id(prefix: &str) -> String {
    let b = random_bytes::<8>();
    let mut n = u64::from_le_bytes(b);
    let mut s = String::with_capacity(prefix.len() + 10);
    s.push_str(prefix);
    for _ in 0..10 {
        s.push(ALPHABET[(n & 31) as usize] as char);
        n >>= 5;
    }
    s
}

/// A 128-bit secret as 32 hex characters.
pub fn new_secret() -> String {
    random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_have_their_shapes() {
        let id = new_id("r");
        assert_eq!(id.len(), 11, "{id}");
        assert!(id.starts_with('r'));
        assert!(id[1..].bytes().all(|b| ALPHABET.contains(&b)), "{id}");
        assert_ne!(new_id("r"), new_id("r"));
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
        assert_ne!(new_secret(), new_secret());
    }
}
