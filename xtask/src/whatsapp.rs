//! WhatsApp Cloud API webhooks as Meta sends them: a text message body and
//! its `X-Hub-Signature-256` header, for `up`'s sample, `bench gateway` and
//! chaos; and the gateway's answer to one.

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// The header Meta signs every delivery with.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// `sha256=<lowercase hex HMAC-SHA256 of the raw body, keyed with the app secret>`.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(app_secret, body))
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`: Meta's signature
/// without its prefix, and Lemon Squeezy's `X-Signature` as it is.
pub fn hmac_sha256_hex(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// One inbound text message.
pub struct TextMessage<'a> {
    /// The sender's WhatsApp id: E.164 digits without the `+`.
    pub wa_id: &'a str,
    pub profile_name: &'a str,
    /// The message id (`wamid....`) the mesh is idempotent on.
    pub wamid: &'a str,
    /// Unix seconds.
    pub timestamp: i64,
    pub text: &'a str,
}

impl TextMessage<'_> {
    /// The webhook body: one entry, one change, one contact, one message.
    pub fn body(&self) -> Vec<u8> {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {
                            "display_phone_number": "15550783881",
                            "phone_number_id": PHONE_NUMBER_ID,
                        },
                        "contacts": [{
                            "profile": {"name": self.profile_name},
                            "wa_id": self.wa_id,
                        }],
                        "messages": [{
                            "from": self.wa_id,
                            "id": self.wamid,
                            "timestamp": self.timestamp.to_string(),
                            "type": "text",
                            "text": {"body": self.text},
                        }],
                    },
                }],
            }],
        });
        serde_json::to_vec(&body).expect("JSON values serialize")
    }
}

/// The gateway's answer to a WhatsApp delivery.
#[derive(Debug, Default)]
pub struct Summary {
    pub stored: u64,
    pub duplicates: u64,
}

/// One signed POST of `body` to the gateway's `url`; the status, and the
/// summary of a 200.
pub async fn post_delivery(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    signature: String,
) -> Result<(reqwest::StatusCode, Summary)> {
    let answer = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    let bytes = answer.bytes().await?;
    if status != reqwest::StatusCode::OK {
        return Ok((status, Summary::default()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).context("the gateway's 200 answer is not JSON")?;
    let count = |field: &str| value[field].as_u64().unwrap_or_default();
    Ok((
        status,
        Summary {
            stored: count("stored"),
            duplicates: count("duplicates"),
        },
    ))
}

/// The business number the sample deliveries are addressed to.
pub const PHONE_NUMBER_ID: &str = "106540352242922";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hex_hmac_of_the_raw_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_carries_the_message() {
        let body = TextMessage {
            wa_id: "573001234567",
            profile_name: "Ana",
            wamid: "wamid.x",
            timestamp: 1_732_270_000,
            text: "¿Mañana a las 9? 👍",
        }
        .body();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = &value["entry"][0]["changes"][0]["value"]["messages"][0];
        assert_eq!(message["id"], "wamid.x");
        assert_eq!(message["timestamp"], "1732270000");
        assert_eq!(message["text"]["body"], "¿Mañana a las 9? 👍");
    }
}
