//! Deciding what becomes of one claimed item: who and where to send it to,
//! whether quiet hours or the WhatsApp window stand in the way, and the
//! SendMessage call itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1::{
    GetMessagingWindowRequest, SendMessageRequest,
    conversations_service_client::ConversationsServiceClient,
    send_message_request::{Content, Target},
};
use mesh_runtime::{ApiError, client::did_not_answer, convert::json_to_struct};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

use super::{
    claim::Item,
    outcome::{self, Outcome},
    quiet::{PeopleCache, quiet_until},
};
use crate::{
    State,
    delivery::{template_from_json, template_json},
    wire::channel,
};

/// What one item's processing shares with the loop.
pub(super) struct Job {
    pub state: Arc<State>,
    pub people: Arc<PeopleCache>,
    /// This replica's lease owner id.
    pub me: Uuid,
}

impl Job {
    /// Sends `item` (or defers or fails it) and records the outcome; returns
    /// when it should be tried again, if it should.
    pub async fn process(self, item: Item) -> Option<DateTime<Utc>> {
        let mut sent = None;
        // Within the lease: past it another replica may claim the item (no
        // second message, thanks to the send token, but two writers).
        let budget = self.state.config.dispatcher.lease.mul_f64(0.8);
        let decision = tokio::time::timeout(budget, self.decide(&item, &mut sent))
            .await
            .unwrap_or_else(|_| {
                Outcome::retry(
                    format!("no answer within {budget:?} (the lease's 80%)"),
                    None,
                )
            });
        let payload = sent.unwrap_or_else(|| payload(&item, None, &Content::Text(item.text())));
        outcome::record(&self.state, self.me, &item, decision, payload).await
    }

    /// `payload` is set to the last SendMessage request tried, as JSON.
    async fn decide(&self, item: &Item, payload_out: &mut Option<Value>) -> Outcome {
        let (person, quiet) = match self.people.get(&self.state, item.user_id).await {
            Ok(found) => found,
            Err(ApiError::NotFound(_)) => return Outcome::fail("user_not_found"),
            Err(error) => return Outcome::retry(format!("users service: {error}"), None),
        };
        if !person.active {
            return Outcome::fail("user_deactivated");
        }
        // An earlier attempt's request goes again as it was: conversations
        // answers a request_id reused for another request with a refusal,
        // and the earlier one may have been delivered.
        let (pinned_channel, pinned) = item.send_request.as_ref().and_then(pinned_request).unzip();
        let channel = match pinned_channel.as_deref() {
            Some(channel) => channel,
            None => match item.channel.as_deref().or(person.default_channel()) {
                Some(channel) => channel,
                None => return Outcome::fail("no_channel"),
            },
        };
        if let Some(quiet) = quiet
            && let Some(until) = quiet_until(Utc::now(), person.time_zone, quiet)
        {
            return Outcome::Defer { until };
        }
        let zone = person.time_zone.name();
        let whatsapp = channel == "whatsapp";
        let mut content = match pinned {
            Some(content) => content,
            None if whatsapp => match self.free_form_allowed(item.user_id, zone).await {
                Ok(true) => Content::Text(item.text()),
                Ok(false) => match outside_window(item) {
                    Ok(template) => template,
                    Err(refusal) => return refusal,
                },
                Err(status) => return classify("GetMessagingWindow", &status),
            },
            None => Content::Text(item.text()),
        };
        let mut rechecked = false;
        loop {
            let payload = payload(item, Some(channel), &content);
            // A retry of the pinned request needs no second write.
            if item.send_request.as_ref() != Some(&payload) {
                match outcome::pin(&self.state, self.me, item, &payload).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Outcome::retry("the lease was lost before the send".into(), None);
                    }
                    Err(error) => {
                        return Outcome::retry(format!("pinning the request: {error}"), None);
                    }
                }
            }
            *payload_out = Some(payload);
            let request = request(item, channel, content.clone());
            match self.send(request).await {
                Ok(provider_message_id) => {
                    return Outcome::Sent {
                        provider_message_id,
                    };
                }
                // The window may have closed since we looked: look once more.
                // (conversations refuses that before it writes anything, so
                // the template may go under the same request_id.)
                Err(status)
                    if status.code() == Code::FailedPrecondition
                        && whatsapp
                        && !rechecked
                        && matches!(content, Content::Text(_)) =>
                {
                    rechecked = true;
                    match self.free_form_allowed(item.user_id, zone).await {
                        Ok(false) => match outside_window(item) {
                            Ok(template) => content = template,
                            Err(refusal) => return refusal,
                        },
                        Ok(true) => return classify("SendMessage", &status),
                        Err(window) => return classify("GetMessagingWindow", &window),
                    }
                }
                Err(status) => return classify("SendMessage", &status),
            }
        }
    }

    async fn free_form_allowed(&self, user: Uuid, zone: &str) -> Result<bool, Status> {
        Ok(
            ConversationsServiceClient::new(self.state.conversations.channel())
                .get_messaging_window(GetMessagingWindowRequest {
                    user_id: user.to_string(),
                    time_zone: zone.to_owned(),
                })
                .await?
                .into_inner()
                .free_form_allowed,
        )
    }

    async fn send(&self, request: SendMessageRequest) -> Result<String, Status> {
        Ok(
            ConversationsServiceClient::new(self.state.conversations.channel())
                .send_message(request)
                .await?
                .into_inner()
                .provider_message_id,
        )
    }
}

/// Outside the WhatsApp window: the item's template, or its failure.
fn outside_window(item: &Item) -> Result<Content, Outcome> {
    item.whatsapp_template
        .as_ref()
        .map(|template| Content::Template(template_from_json(template)))
        .ok_or_else(|| Outcome::fail("outside_whatsapp_window"))
}

/// The same request on every attempt (conversations compares a retry's
/// request with the first one under the same request_id).
fn request(item: &Item, channel_text: &str, content: Content) -> SendMessageRequest {
    SendMessageRequest {
        target: Some(Target::UserId(item.user_id.to_string())),
        channel: channel::parse(channel_text) as i32,
        content: Some(content),
        role: 0,
        proactive: true,
        reply_to_message_id: String::new(),
        metadata: Some(json_to_struct(&metadata(item))),
        request_id: item.send_token.to_string(),
    }
}

fn metadata(item: &Item) -> Value {
    json!({"source": "scheduler", "kind": item.kind.label(), "item_id": item.id.to_string()})
}

/// The SendMessage request as a dead letter keeps it.
fn payload(item: &Item, channel_text: Option<&str>, content: &Content) -> Value {
    let mut payload = json!({
        "user_id": item.user_id.to_string(),
        "channel": channel_text,
        "proactive": true,
        "request_id": item.send_token.to_string(),
        "metadata": metadata(item),
    });
    match content {
        Content::Text(text) => payload["text"] = json!(text),
        Content::Template(template) => payload["template"] = template_json(template),
    }
    payload
}

/// The channel and content of a request [`payload`] wrote; None for
/// anything else (a row written by hand: decided afresh).
fn pinned_request(payload: &Value) -> Option<(String, Content)> {
    let channel = payload["channel"]
        .as_str()
        .filter(|c| channel::parse(c) as i32 != 0)?;
    let content = match (payload.get("text"), payload.get("template")) {
        (Some(Value::String(text)), None) => Content::Text(text.clone()),
        (None, Some(template @ Value::Object(_))) => {
            Content::Template(template_from_json(template))
        }
        _ => return None,
    };
    Some((channel.to_owned(), content))
}

/// A refusal by the mesh: worth retrying (it may be lifted) or final.
fn classify(call: &str, status: &Status) -> Outcome {
    let error = format!("{call}: {:?}: {}", status.code(), status.message());
    match status.code() {
        code if did_not_answer(code) || code == Code::Internal => {
            let retry_after = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay);
            Outcome::retry(error, retry_after)
        }
        // Refused for good as it stands, for a cause outside the item that an
        // operator may fix: WhatsApp not configured, the user deactivated,
        // or the send token already used for another request (an earlier
        // attempt not recorded here: it may have been delivered, so no new
        // token is tried). Failed with a dead letter, so that RetryDeadLetter
        // can send it once the cause is gone (a failed check-in has no other
        // way back).
        _ => Outcome::DeadLetter { error },
    }
}
