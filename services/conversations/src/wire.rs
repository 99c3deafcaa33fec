//! The wire enums and the text the database stores for them, in one place
//! (the mapping itself is mesh_runtime::text_enum!).

use mesh_runtime::text_enum;
pub use mesh_runtime::wire::{
    MAX_JSON_BYTES, json_object, non_empty, optional_uuid, required_text, text,
};

text_enum!(mesh_proto::mesh::conversations::v1; channel, Channel {
    Whatsapp => "whatsapp", Telegram => "telegram", Web => "web", App => "app",
});
text_enum!(mesh_proto::mesh::conversations::v1; conversation_status, ConversationStatus {
    Active => "active", Closed => "closed", Archived => "archived",
});
text_enum!(mesh_proto::mesh::conversations::v1; direction, MessageDirection {
    Inbound => "inbound", Outbound => "outbound",
});
text_enum!(mesh_proto::mesh::conversations::v1; role, MessageRole {
    User => "user", Assistant => "assistant", System => "system",
});
text_enum!(mesh_proto::mesh::conversations::v1; message_type, MessageType {
    Text => "text", Image => "image", Audio => "audio", Sticker => "sticker",
    Video => "video", Document => "document", Location => "location",
    Interactive => "interactive", Button => "button", Reaction => "reaction",
    Order => "order", Contacts => "contacts", System => "system",
    Unknown => "unknown", Template => "template",
});
text_enum!(mesh_proto::mesh::conversations::v1; delivery_status, DeliveryStatus {
    Pending => "pending", Accepted => "accepted", Sent => "sent",
    Delivered => "delivered", Read => "read", Played => "played", Failed => "failed",
});
text_enum!(mesh_proto::mesh::conversations::v1; event_type, EventType {
    MessageReceived => "message_received", MessageSent => "message_sent",
    DeliveryStatusChanged => "delivery_status_changed",
    ConversationStarted => "conversation_started", ConversationUpdated => "conversation_updated",
});
text_enum!(mesh_proto::mesh::conversations::v1; flow_type, FlowType {
    Navigate => "navigate", DataExchange => "data_exchange",
});
text_enum!(mesh_proto::mesh::conversations::v1; flow_status, FlowSessionStatus {
    Pending => "pending", InProgress => "in_progress", Completed => "completed",
    Expired => "expired", Failed => "failed",
});
text_enum!(mesh_proto::mesh::conversations::v1; call_direction, CallDirection {
    Inbound => "inbound", Outbound => "outbound",
});
text_enum!(mesh_proto::mesh::conversations::v1; call_status, CallStatus {
    Ringing => "ringing", Answered => "answered", Completed => "completed",
    Missed => "missed", Rejected => "rejected", Failed => "failed",
});
text_enum!(mesh_proto::mesh::conversations::v1; interaction_type, InteractionType {
    CtaTap => "cta_tap", ButtonReply => "button_reply", ListReply => "list_reply",
    FlowCompletion => "flow_completion", CallAccepted => "call_accepted",
    CallRejected => "call_rejected",
});
text_enum!(mesh_proto::mesh::conversations::v1; execution_status, ExecutionStatus {
    Success => "success", Error => "error", Timeout => "timeout",
});
text_enum!(mesh_proto::mesh::conversations::v1; webhook_source, WebhookSource {
    Whatsapp => "whatsapp", Telegram => "telegram", Lemonsqueezy => "lemonsqueezy",
});
text_enum!(mesh_proto::mesh::conversations::v1; webhook_status, WebhookFailureStatus {
    Pending => "pending", Retrying => "retrying", Resolved => "resolved", Abandoned => "abandoned",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_outside_the_mapping_is_refused_naming_the_proto_values() {
        let refused = channel::require("channel", 99).unwrap_err();
        assert_eq!(refused.field, "channel");
        assert_eq!(
            refused.description,
            "must be one of CHANNEL_WHATSAPP, CHANNEL_TELEGRAM, CHANNEL_WEB, CHANNEL_APP"
        );
        assert!(channel::require("channel", 0).is_err());
        assert_eq!(channel::optional("channel", 0).unwrap(), None);
        assert_eq!(flow_status::require("status", 2).unwrap(), "in_progress");
        assert_eq!(
            webhook_status::parse("abandoned"),
            mesh_proto::mesh::conversations::v1::WebhookFailureStatus::Abandoned
        );
    }
}
