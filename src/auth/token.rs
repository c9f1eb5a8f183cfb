//! Opaque session tokens: 256 random bits handed to the client once, and their SHA-256 digest,
//! which is the only form ever stored. A leaked store therefore yields no usable tokens.
//! Tokens must never be logged.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh token: 32 bytes from the OS RNG, base64 URL-safe without padding (43 characters).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Lowercase hex SHA-256 of `token`: the session key stored in place of the token.
/// A plain hash (no salt, no stretching) suffices because tokens are high-entropy.
pub fn digest(token: &str) -> String {
    // Once per authenticated request (the session cache's key): a table look-up per byte, not
    // 32 formatting calls.
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens are 43 URL-safe characters and do not repeat.
    #[test]
    fn tokens_are_url_safe_and_unique() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    /// The digest is the standard SHA-256 hex of the token.
    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = generate();
        assert_eq!(digest(&t), digest(&t));
        assert_ne!(digest(&t), t);
    }
}
