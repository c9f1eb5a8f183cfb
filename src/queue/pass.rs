//! Queue passes: what an admitted user shows (`Queue-Pass`) to reserve. A pass is
//! `v1.<claims>.<signature>`, both parts base64url without padding: the claims are the user
//! id, the event id (16 bytes each) and the expiry (Unix seconds, 8 bytes, big-endian); the
//! signature is HMAC-SHA256 over `v1.<claims>` keyed with `QUEUE_PASS_SECRET`. Verifying needs
//! only the key (no database) and compares the signature in constant time. Whether a pass is
//! for this user, this event and still valid is the caller's check (`Claims`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

const VERSION: &str = "v1";
const CLAIMS_LEN: usize = 16 + 16 + 8;

/// The signing key, as a keyed HMAC state cloned for each pass (the key's pads are hashed
/// once). `Debug` never prints it.
#[derive(Clone)]
pub struct PassKey(Hmac<Sha256>);

/// A key HMAC refuses (it takes any length, so this does not happen in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unusable queue pass key")]
pub struct BadKey;

impl PassKey {
    pub fn new(secret: &[u8]) -> Result<Self, BadKey> {
        <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map(PassKey)
            .map_err(|_| BadKey)
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(signed.as_bytes());
        mac
    }

    /// The pass for `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let mut raw = Vec::with_capacity(CLAIMS_LEN);
        raw.extend_from_slice(claims.user_id.as_bytes());
        raw.extend_from_slice(claims.event_id.as_bytes());
        raw.extend_from_slice(&claims.expires_at.to_be_bytes());
        let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(raw));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    /// The claims of a pass this key signed; `Forged` for anything else.
    pub fn verify(&self, pass: &str) -> Result<Claims, Forged> {
        let (signed, signature) = pass.rsplit_once('.').ok_or(Forged)?;
        let claims = signed.strip_prefix("v1.").ok_or(Forged)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Forged)?;
        self.mac(signed)
            .verify_slice(&signature)
            .map_err(|_| Forged)?;
        let raw = URL_SAFE_NO_PAD.decode(claims).map_err(|_| Forged)?;
        if raw.len() != CLAIMS_LEN {
            return Err(Forged);
        }
        let id = |at: usize| Uuid::from_slice(&raw[at..at + 16]).map_err(|_| Forged);
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&raw[32..]);
        Ok(Claims {
            user_id: id(0)?,
            event_id: id(16)?,
            expires_at: i64::from_be_bytes(expiry),
        })
    }
}

impl std::fmt::Debug for PassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassKey(<redacted>)")
    }
}

/// What a pass says: who, for which event, until when (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user_id: Uuid,
    pub event_id: Uuid,
    pub expires_at: i64,
}

/// Not a pass this key signed (tampered, truncated, another key's, or not a pass at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid queue pass")]
pub struct Forged;

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user_id: Uuid::new_v4(),
            event_id: Uuid::new_v4(),
            expires_at: 1_900_000_000,
        }
    }

    /// A pass round-trips through its key.
    #[test]
    fn a_pass_carries_its_claims() {
        let key = PassKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let c = claims();
        let pass = key.issue(&c);
        assert!(pass.starts_with("v1."));
        assert_eq!(key.verify(&pass), Ok(c));
    }

    /// Another key's pass, a changed claim or signature, and garbage are all forged.
    #[test]
    fn tampered_passes_are_refused() {
        let key = PassKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let pass = key.issue(&claims());
        assert_eq!(
            PassKey::new(b"another key").unwrap().verify(&pass),
            Err(Forged)
        );
        let (signed, signature) = pass.rsplit_once('.').unwrap();
        let other = PassKey::new(b"0123456789abcdef0123456789abcdef")
            .unwrap()
            .issue(&claims());
        let (other_signed, _) = other.rsplit_once('.').unwrap();
        assert_eq!(
            key.verify(&format!("{other_signed}.{signature}")),
            Err(Forged)
        );
        let mut flipped = signature.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(key.verify(&format!("{signed}.{flipped}")), Err(Forged));
        for junk in ["", "v1", "v1..", "v2.x.y", "not a pass"] {
            assert_eq!(key.verify(junk), Err(Forged), "{junk:?}");
        }
    }
}
