-- The scheduler context: reminders, daily check-ins, notifications, calendar
-- events, and the dead letters of sends the dispatcher gave up on.
--
-- Reminders and check-ins are "dispatchable": the dispatcher claims the due
-- pending ones (next_attempt_time <= now) with FOR UPDATE SKIP LOCKED and a
-- lease (lease_owner, lease_expire_time); a replica that dies mid-send loses
-- its lease when it expires and another takes the item. Each is sent with its
-- send_token as conversations.SendMessage's request_id, so a second attempt
-- of the same item is never a second message.

CREATE FUNCTION set_update_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.update_time := now();
    RETURN NEW;
END
$$;

CREATE TABLE reminders (
    id                  uuid PRIMARY KEY,
    user_id             uuid NOT NULL,
    title               text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description         text NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    scheduled_time      timestamptz NOT NULL,
    -- IANA name; local times and recurrences are computed in it.
    time_zone           text NOT NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    status_reason       text NOT NULL DEFAULT '',
    retry_count         integer NOT NULL DEFAULT 0,
    send_token          uuid NOT NULL UNIQUE,
    metadata            jsonb NOT NULL DEFAULT '{}',
    -- {"frequency": "daily"|"weekly"|"monthly", "interval": n,
    --  "weekdays": [1..7], "until_date": "YYYY-MM-DD", "count": n}
    recurrence          jsonb,
    -- The first occurrence's local wall-clock time, which every later one keeps.
    series_id           uuid NOT NULL,
    occurrence          integer NOT NULL DEFAULT 1 CHECK (occurrence >= 1),
    series_local_time   timestamp NOT NULL,
    -- 'whatsapp' | 'telegram'; NULL: decided at send time from the user.
    channel             text CHECK (channel IN ('whatsapp', 'telegram')),
    -- mesh.conversations.v1.Template as JSON.
    whatsapp_template   jsonb,
    -- The SendMessage request last made under send_token (channel, text or
    -- template), written before the call: every later attempt resends it
    -- as it is, so a retry is never refused as another request.
    send_request        jsonb,
    calendar_event_id   uuid,
    next_attempt_time   timestamptz NOT NULL,
    lease_owner         uuid,
    lease_expire_time   timestamptz,
    provider_message_id text,
    sent_time           timestamptz,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reminders_occurrence_once UNIQUE (series_id, occurrence),
    CONSTRAINT reminders_sent_time CHECK ((status = 'sent') = (sent_time IS NOT NULL))
);
CREATE TRIGGER reminders_update_time BEFORE UPDATE ON reminders
    FOR EACH ROW EXECUTE FUNCTION set_update_time();
CREATE INDEX reminders_user ON reminders (user_id, scheduled_time, id);
CREATE INDEX reminders_due ON reminders (next_attempt_time) WHERE status = 'pending';
CREATE INDEX reminders_calendar_event ON reminders (calendar_event_id)
    WHERE calendar_event_id IS NOT NULL;

CREATE TABLE check_ins (
    id                  uuid PRIMARY KEY,
    user_id             uuid NOT NULL,
    -- The user's local day.
    slot_date           date NOT NULL,
    scheduled_time      timestamptz NOT NULL,
    time_zone           text NOT NULL,
    priority            text NOT NULL DEFAULT 'generic' CHECK (priority IN (
        'follow_up', 'thread', 'pattern', 'texture', 'generic')),
    generation_context  jsonb NOT NULL DEFAULT '{}',
    content             text CHECK (char_length(content) BETWEEN 1 AND 4096),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    status_reason       text NOT NULL DEFAULT '',
    retry_count         integer NOT NULL DEFAULT 0,
    send_token          uuid NOT NULL UNIQUE,
    channel             text CHECK (channel IN ('whatsapp', 'telegram')),
    whatsapp_template   jsonb,
    -- As reminders.send_request.
    send_request        jsonb,
    next_attempt_time   timestamptz NOT NULL,
    lease_owner         uuid,
    lease_expire_time   timestamptz,
    provider_message_id text,
    sent_time           timestamptz,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT check_ins_one_per_slot UNIQUE (user_id, slot_date),
    CONSTRAINT check_ins_sent_time CHECK ((status = 'sent') = (sent_time IS NOT NULL))
);
CREATE TRIGGER check_ins_update_time BEFORE UPDATE ON check_ins
    FOR EACH ROW EXECUTE FUNCTION set_update_time();
-- Only check-ins with content are sent; those without wait for it (or are
-- skipped after the grace period: check_ins_waiting).
CREATE INDEX check_ins_due ON check_ins (next_attempt_time)
    WHERE status = 'pending' AND content IS NOT NULL;
CREATE INDEX check_ins_waiting ON check_ins (scheduled_time)
    WHERE status = 'pending' AND content IS NULL;

CREATE TABLE notifications (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    type        text NOT NULL CHECK (type IN (
        'session_prep', 'insight', 'alert', 'followup', 'reminder')),
    title       text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    message     text NOT NULL CHECK (char_length(message) BETWEEN 1 AND 4000),
    action      jsonb NOT NULL DEFAULT '{}',
    priority    text NOT NULL DEFAULT 'normal' CHECK (priority IN (
        'low', 'normal', 'high', 'urgent')),
    read_time   timestamptz,
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user ON notifications (user_id, create_time DESC, id DESC);
CREATE INDEX notifications_unread ON notifications (user_id, create_time DESC, id DESC)
    WHERE read_time IS NULL;
CREATE INDEX notifications_read ON notifications (read_time) WHERE read_time IS NOT NULL;

CREATE TABLE calendar_events (
    id                      uuid PRIMARY KEY,
    user_id                 uuid NOT NULL,
    title                   text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description             text NOT NULL DEFAULT '',
    start_time              timestamptz NOT NULL,
    end_time                timestamptz NOT NULL,
    location                text NOT NULL DEFAULT '',
    status                  text NOT NULL DEFAULT 'confirmed' CHECK (status IN (
        'confirmed', 'tentative', 'cancelled')),
    external_id             text,
    reminder_minutes_before integer CHECK (reminder_minutes_before BETWEEN 0 AND 40320),
    reminder_id             uuid,
    create_time             timestamptz NOT NULL DEFAULT now(),
    update_time             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT calendar_events_order CHECK (start_time < end_time),
    CONSTRAINT calendar_events_external_id UNIQUE (user_id, external_id)
);
CREATE TRIGGER calendar_events_update_time BEFORE UPDATE ON calendar_events
    FOR EACH ROW EXECUTE FUNCTION set_update_time();
CREATE INDEX calendar_events_upcoming ON calendar_events (user_id, start_time, id);

CREATE TABLE dead_letters (
    id          uuid PRIMARY KEY,
    operation   text NOT NULL CHECK (operation IN ('send_reminder', 'send_check_in')),
    item_id     uuid NOT NULL,
    user_id     uuid NOT NULL,
    payload     jsonb NOT NULL,
    error       text NOT NULL,
    retries     integer NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    -- An item is dead-lettered at most once at a time.
    CONSTRAINT dead_letters_item UNIQUE (item_id)
);
CREATE INDEX dead_letters_user ON dead_letters (user_id, id);

-- Answers of retryable RPCs by request_id (see mesh_runtime::idempotency).
CREATE TABLE idempotency_keys (
    operation   text NOT NULL,
    request_id  text NOT NULL,
    request     bytea NOT NULL,
    response    bytea,
    user_id     uuid,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, request_id)
);
CREATE INDEX idempotency_keys_user ON idempotency_keys (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX idempotency_keys_age ON idempotency_keys (create_time);
