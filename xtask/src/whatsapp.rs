//! WhatsApp Cloud API webhooks as Meta sends them: a text message body and
//! its `X-Hub-Signature-256` header, for `up`'s sample and `bench gateway`.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// The header Meta signs every delivery with.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// `sha256=<lowercase hex HMAC-SHA256 of the raw body, keyed with the app secret>`.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
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
