//! Webhook authenticity checks. All run before any parsing, on exactly what
//! arrived: WhatsApp signs the raw bytes of its own (escaped-unicode)
//! serialisation, and Lemon Squeezy the raw body too, so hashing anything
//! re-serialised would not match.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook was not accepted as authentic (answer 401/403; the reasons are
/// short and say nothing about the expected value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// Our own secret is empty: refuse everything rather than accept a MAC
    /// keyed with nothing, which anyone could compute.
    #[error("no webhook secret configured")]
    NotConfigured,
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// Prefix Meta puts before the hex digest in `X-Hub-Signature-256`.
const SHA256_PREFIX: &str = "sha256=";

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256 of
/// `raw_body` keyed with the app secret. Meta sends lowercase hex; uppercase
/// is accepted too since it decodes to the same digest.
pub fn verify_whatsapp(
    app_secret: &[u8],
    header: Option<&str>,
    raw_body: &[u8],
) -> Result<(), SignatureError> {
    if app_secret.is_empty() {
        return Err(SignatureError::NotConfigured);
    }
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .strip_prefix(SHA256_PREFIX)
        .ok_or(SignatureError::Malformed)?;
    verify_hex_hmac(app_secret, hex_digest, raw_body)
}

/// The `X-Hub-Signature-256` value Meta sends for `raw_body`: what a
/// sender of test or replayed deliveries needs.
pub fn sign_whatsapp(app_secret: &[u8], raw_body: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex_hmac(app_secret, raw_body))
}

/// Checks Lemon Squeezy's `X-Signature: <hex>` (no prefix) against
/// HMAC-SHA256 of `raw_body` keyed with the webhook's signing secret. Lemon
/// Squeezy sends lowercase hex; uppercase is accepted too.
pub fn verify_lemonsqueezy(
    signing_secret: &[u8],
    header: Option<&str>,
    raw_body: &[u8],
) -> Result<(), SignatureError> {
    if signing_secret.is_empty() {
        return Err(SignatureError::NotConfigured);
    }
    let header = header.ok_or(SignatureError::Missing)?;
    verify_hex_hmac(signing_secret, header, raw_body)
}

/// The `X-Signature` value Lemon Squeezy sends for `raw_body`.
pub fn sign_lemonsqueezy(signing_secret: &[u8], raw_body: &[u8]) -> String {
    hex_hmac(signing_secret, raw_body)
}

/// Compares `hex_digest` with HMAC-SHA256 of `raw_body` under `secret`, in
/// constant time.
fn verify_hex_hmac(secret: &[u8], hex_digest: &str, raw_body: &[u8]) -> Result<(), SignatureError> {
    // Fixed-size decode: rejects wrong lengths and non-hex in one step.
    let mut tag = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut tag).map_err(|_| SignatureError::Malformed)?;
    // HMAC takes keys of any length, so this cannot fail; no unwrap all the same.
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::NotConfigured)?;
    mac.update(raw_body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

/// Lowercase hex HMAC-SHA256 of `raw_body` under `secret`.
fn hex_hmac(secret: &[u8], raw_body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
    mac.update(raw_body);
    hex::encode(mac.finalize().into_bytes())
}

/// Longest secret token Telegram accepts in `setWebhook`.
const TELEGRAM_TOKEN_MAX: usize = 256;

/// Checks `X-Telegram-Bot-Api-Secret-Token` against the `secret_token` given
/// to `setWebhook`. The comparison is constant-time in the content (a length
/// difference is allowed to show: the length is not the secret).
pub fn verify_telegram(expected: &str, header: Option<&str>) -> Result<(), SignatureError> {
    if expected.is_empty() {
        return Err(SignatureError::NotConfigured);
    }
    let got = header.ok_or(SignatureError::Missing)?;
    if !is_telegram_token(got) {
        return Err(SignatureError::Malformed);
    }
    if bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Telegram's rule for secret tokens: 1-256 chars of `A-Z a-z 0-9 _ -`.
pub fn is_telegram_token(s: &str) -> bool {
    (1..=TELEGRAM_TOKEN_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"app-secret";

    fn sign(secret: &[u8], body: &[u8]) -> String {
        sign_whatsapp(secret, body)
    }

    /// JSON with every non-ASCII char written as `\uXXXX` (UTF-16), the form
    /// Meta serialises and signs.
    fn escape_non_ascii(json: &str) -> String {
        let mut out = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        out
    }

    #[test]
    fn whatsapp_accepts_a_correct_signature() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = sign(SECRET, body);
        assert_eq!(verify_whatsapp(SECRET, Some(&header), body), Ok(()));
        let upper = format!("sha256={}", header[7..].to_uppercase());
        assert_eq!(verify_whatsapp(SECRET, Some(&upper), body), Ok(()));
    }

    #[test]
    fn whatsapp_failures_are_distinct() {
        let body = b"{}";
        let good = sign(SECRET, body);
        assert_eq!(
            verify_whatsapp(SECRET, None, body),
            Err(SignatureError::Missing)
        );
        for bad in [
            "",
            "sha256=",
            "sha1=abcd",
            &good[7..],                             // no prefix
            &good[..good.len() - 1],                // one hex digit short
            &format!("{good}00"),                   // too long
            &format!("sha256={}", "zz".repeat(32)), // not hex
            &format!("SHA256={}", &good[7..]),      // prefix is case-sensitive
        ] {
            assert_eq!(
                verify_whatsapp(SECRET, Some(bad), body),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify_whatsapp(b"other-secret", Some(&good), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_whatsapp(SECRET, Some(&good), b"{} "),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_whatsapp(b"", Some(&good), body),
            Err(SignatureError::NotConfigured)
        );
    }

    #[test]
    fn whatsapp_signs_the_raw_bytes_not_the_json() {
        let value = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messages": [{"from": "5511999990000", "id": "wamid.X",
                    "timestamp": "1700000000", "type": "text",
                    "text": {"body": "Olá, ção 👋 日本"}}]}}]}]
        });
        let meta_body = escape_non_ascii(&value.to_string());
        assert!(
            meta_body.contains(r"\ud83d\udc4b"),
            "emoji as a surrogate pair"
        );
        let header = sign(SECRET, meta_body.as_bytes());
        assert_eq!(
            verify_whatsapp(SECRET, Some(&header), meta_body.as_bytes()),
            Ok(())
        );
        // Same JSON value, serialised again: raw UTF-8 instead of escapes.
        let reparsed: serde_json::Value = serde_json::from_str(&meta_body).expect("valid JSON");
        assert_eq!(reparsed, value);
        let reserialised = serde_json::to_vec(&reparsed).expect("serialises");
        assert_ne!(reserialised, meta_body.as_bytes());
        assert_eq!(
            verify_whatsapp(SECRET, Some(&header), &reserialised),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn lemonsqueezy_accepts_its_signature_and_refuses_the_rest() {
        let body = br#"{"meta":{"event_name":"subscription_created"},"data":{"type":"subscriptions","id":"1"}}"#;
        let good = sign_lemonsqueezy(SECRET, body);
        assert_eq!(good.len(), 64);
        assert!(!good.bytes().any(|b| b.is_ascii_uppercase()), "{good}");
        // The same digest as WhatsApp's, without Meta's prefix.
        assert_eq!(format!("sha256={good}"), sign_whatsapp(SECRET, body));
        assert_eq!(verify_lemonsqueezy(SECRET, Some(&good), body), Ok(()));
        let upper = good.to_uppercase();
        assert_eq!(verify_lemonsqueezy(SECRET, Some(&upper), body), Ok(()));

        assert_eq!(
            verify_lemonsqueezy(SECRET, None, body),
            Err(SignatureError::Missing)
        );
        for bad in [
            "",
            &good[..63],                 // one hex digit short
            &good[..62],                 // one byte short
            &format!("{good}00"),        // too long
            &format!("sha256={good}"),   // Meta's prefix is not Lemon Squeezy's
            &"zz".repeat(32),            // not hex
            &format!(" {}", &good[1..]), // padded
        ] {
            assert_eq!(
                verify_lemonsqueezy(SECRET, Some(bad), body),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        let mut flipped = good.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            verify_lemonsqueezy(SECRET, Some(&flipped), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_lemonsqueezy(b"other-secret", Some(&good), body),
            Err(SignatureError::Mismatch)
        );
        let mut changed = body.to_vec();
        changed.push(b'\n');
        assert_eq!(
            verify_lemonsqueezy(SECRET, Some(&good), &changed),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_lemonsqueezy(b"", Some(&good), body),
            Err(SignatureError::NotConfigured)
        );
    }

    #[test]
    fn telegram_token_checks() {
        let t = "s3cret_Token-1";
        assert_eq!(verify_telegram(t, Some(t)), Ok(()));
        assert_eq!(verify_telegram(t, None), Err(SignatureError::Missing));
        assert_eq!(
            verify_telegram(t, Some("s3cret_Token-2")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_telegram(t, Some("s3cret")),
            Err(SignatureError::Mismatch)
        );
        for bad in ["", "has space", "ünï", &"a".repeat(257)] {
            assert_eq!(
                verify_telegram(t, Some(bad)),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify_telegram("", Some(t)),
            Err(SignatureError::NotConfigured)
        );
    }
}
