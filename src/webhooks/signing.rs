//! Standard Webhooks signing: secrets are `whsec_` + base64 of 32 random bytes; a message is
//! signed as `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), the key being the
//! base64-decoded part after `whsec_`. Several signatures (one per secret, during a
//! rotation) are separated by spaces.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("{PREFIX}{}", STANDARD.encode(key))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must be whsec_ followed by base64")]
pub struct BadSecret;

/// The `webhook-signature` header value for `body` sent as message `id` at `timestamp`
/// (Unix seconds), one `v1,` signature per secret.
pub fn sign(secrets: &[&str], id: &str, timestamp: i64, body: &str) -> Result<String, BadSecret> {
    let mut out = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let key = STANDARD
            .decode(secret.strip_prefix(PREFIX).ok_or(BadSecret)?)
            .map_err(|_| BadSecret)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| BadSecret)?;
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        out.push(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference test vectors.
    #[test]
    fn signs_the_reference_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// A new secret carries 32 bytes, and two are never the same.
    #[test]
    fn secrets_are_32_random_bytes() {
        let a = new_secret();
        assert_eq!(STANDARD.decode(&a[PREFIX.len()..]).unwrap().len(), 32);
        assert_ne!(a, new_secret());
        assert_eq!(
            sign(&[&a, &new_secret()], "m", 1, "b")
                .unwrap()
                .split(' ')
                .count(),
            2
        );
        assert_eq!(sign(&["nope"], "m", 1, "b"), Err(BadSecret));
    }
}
