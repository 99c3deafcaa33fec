//! The scheduler's wire enums and the text the database stores for them.

use mesh_runtime::{FieldViolation, text_enum};

pub use mesh_runtime::wire::{json_object, required_text, text};

/// An optional text field: None when empty, else `parse` of it.
pub fn optional<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, FieldViolation>,
) -> Result<Option<T>, FieldViolation> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

text_enum!(mesh_proto::mesh::scheduler::v1; reminder_status, ReminderStatus {
    Pending => "pending", Sent => "sent", Failed => "failed", Cancelled => "cancelled",
});
text_enum!(mesh_proto::mesh::scheduler::v1; recurrence_frequency, RecurrenceFrequency {
    Daily => "daily", Weekly => "weekly", Monthly => "monthly",
});
text_enum!(mesh_proto::mesh::scheduler::v1; check_in_priority, CheckInPriority {
    FollowUp => "follow_up", Thread => "thread", Pattern => "pattern", Texture => "texture",
    Generic => "generic",
});
text_enum!(mesh_proto::mesh::scheduler::v1; check_in_status, CheckInStatus {
    Pending => "pending", Sent => "sent", Failed => "failed", Skipped => "skipped",
});
text_enum!(mesh_proto::mesh::scheduler::v1; notification_type, NotificationType {
    SessionPrep => "session_prep", Insight => "insight", Alert => "alert",
    Followup => "followup", Reminder => "reminder",
});
text_enum!(mesh_proto::mesh::scheduler::v1; notification_priority, NotificationPriority {
    Low => "low", Normal => "normal", High => "high", Urgent => "urgent",
});
text_enum!(mesh_proto::mesh::scheduler::v1; calendar_event_status, CalendarEventStatus {
    Confirmed => "confirmed", Tentative => "tentative", Cancelled => "cancelled",
});
text_enum!(mesh_proto::mesh::scheduler::v1; dead_letter_operation, DeadLetterOperation {
    SendReminder => "send_reminder", SendCheckIn => "send_check_in",
});
text_enum!(mesh_proto::mesh::conversations::v1; channel, Channel {
    Whatsapp => "whatsapp", Telegram => "telegram",
});
