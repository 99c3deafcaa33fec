-- The conversations context. Everything here is owned by mesh_conversations in
-- schema conversations. user_id columns name users of the users service: plain
-- UUIDs, no foreign key across contexts.

CREATE FUNCTION set_update_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.update_time := now();
    RETURN NEW;
END
$$;

CREATE TABLE conversations (
    id                       uuid PRIMARY KEY,
    user_id                  uuid NOT NULL,
    channel                  text NOT NULL CHECK (channel IN ('whatsapp', 'telegram', 'web', 'app')),
    status                   text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed', 'archived')),
    start_time               timestamptz NOT NULL DEFAULT now(),
    end_time                 timestamptz,
    -- Also the last sequence number given out: appends lock this row to take the next.
    message_count            bigint NOT NULL DEFAULT 0,
    last_message_time        timestamptz,
    context_summary          text NOT NULL DEFAULT '',
    mood_summary             text NOT NULL DEFAULT '',
    topics                   text[] NOT NULL DEFAULT '{}',
    provider_conversation_id text UNIQUE,
    metadata                 jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    update_time              timestamptz NOT NULL DEFAULT now()
);
-- At most one active conversation per user and channel.
CREATE UNIQUE INDEX conversations_one_active ON conversations (user_id, channel) WHERE status = 'active';
CREATE INDEX conversations_user ON conversations (user_id, id DESC);
CREATE TRIGGER conversations_update_time BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

-- The order delivery statuses only move forward in; failed is final.
CREATE FUNCTION delivery_rank(status text) RETURNS int LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'pending' THEN 1 WHEN 'accepted' THEN 2 WHEN 'sent' THEN 3
        WHEN 'delivered' THEN 4 WHEN 'read' THEN 5 WHEN 'played' THEN 6
        WHEN 'failed' THEN 7 ELSE 0 END
$$;

CREATE TABLE messages (
    id                           uuid PRIMARY KEY,
    conversation_id              uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id                      uuid NOT NULL,
    channel                      text NOT NULL,
    sequence_number              bigint NOT NULL CHECK (sequence_number > 0),
    direction                    text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    role                         text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    type                         text NOT NULL CHECK (type IN (
                                     'text', 'image', 'audio', 'sticker', 'video', 'document',
                                     'location', 'interactive', 'button', 'reaction', 'order',
                                     'contacts', 'system', 'unknown', 'template')),
    content                      text NOT NULL DEFAULT '',
    media_url                    text,
    media_provider_id            text,
    media_mime_type              text,
    media_sha256                 text,
    media_caption                text,
    provider_message_id          text,
    reply_to_message_id          uuid,
    reply_to_provider_message_id text,
    metadata                     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    provider_time                timestamptz,
    -- The clock, not the transaction's start: appends are serialised on the
    -- conversation, so create_time then follows the sequence numbers.
    create_time                  timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivery_status              text CHECK (delivery_status IS NULL OR delivery_rank(delivery_status) > 0),
    sent_time                    timestamptz,
    delivered_time               timestamptz,
    read_time                    timestamptz,
    played_time                  timestamptz,
    failed_time                  timestamptz,
    error_code                   text,
    error_title                  text,
    error_message                text,
    pricing_category             text,
    proactive                    boolean NOT NULL DEFAULT false,
    -- SendMessage's request_id and the request it came with: a retry finds
    -- the message instead of sending again.
    send_request_id              text UNIQUE,
    send_request                 bytea,
    -- The provider refused the send for a rate limit or an outage: a retry
    -- with the same request_id may try again.
    send_retryable               boolean NOT NULL DEFAULT false,
    CHECK (content <> '' OR media_url IS NOT NULL OR media_provider_id IS NOT NULL),
    CONSTRAINT messages_sequence UNIQUE (conversation_id, sequence_number),
    CONSTRAINT messages_provider_id UNIQUE (channel, provider_message_id)
);
CREATE INDEX messages_user ON messages (user_id, create_time);
CREATE INDEX messages_conversation_time ON messages (conversation_id, create_time);

-- Delivery statuses that arrived before their message was stored; applied
-- when it is, deleted after 7 days.
CREATE TABLE deferred_statuses (
    channel             text NOT NULL,
    provider_message_id text NOT NULL,
    status              text NOT NULL,
    status_time         timestamptz NOT NULL,
    error_code          text,
    error_title         text,
    error_message       text,
    pricing_category    text,
    create_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, provider_message_id, status)
);
CREATE INDEX deferred_statuses_create_time ON deferred_statuses (create_time);

CREATE TABLE message_feedback (
    message_id  uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    rating      int NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment     text NOT NULL DEFAULT '',
    update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_feedback_user ON message_feedback (user_id);

-- The WhatsApp windows of one user.
CREATE TABLE messaging_windows (
    user_id                uuid PRIMARY KEY,
    -- When the user last wrote: the customer service window runs 24 h from it.
    last_inbound_time      timestamptz,
    -- When the user last came from an ad, and which.
    referral_time          timestamptz,
    referral               jsonb,
    -- Our first reply within 24 h of the referral: the free entry point window
    -- runs 72 h from it.
    free_entry_point_start timestamptz,
    update_time            timestamptz NOT NULL DEFAULT now()
);

-- The event stream. seq is given out under the event_head row lock, held to
-- commit, so it is gapless and in commit order: a reader that has seen seq N
-- has seen every event before it.
CREATE TABLE event_head (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq       bigint NOT NULL,
    -- Retention deletes a prefix of the stream: every event up to this seq.
    -- Set before the rows go, so a reader behind it knows it missed some
    -- (OUT_OF_RANGE) rather than skipping them; PurgeUser's holes are not counted.
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO event_head (last_seq) VALUES (0);

CREATE TABLE events (
    seq             bigint PRIMARY KEY,
    type            text NOT NULL,
    user_id         uuid NOT NULL,
    conversation_id uuid,
    -- The encoded mesh.conversations.v1.Event, without its cursor.
    payload         bytea NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_user ON events (user_id);
CREATE INDEX events_create_time ON events (create_time);

CREATE TABLE flow_sessions (
    id              uuid PRIMARY KEY,
    flow_token      text NOT NULL UNIQUE,
    user_id         uuid NOT NULL,
    conversation_id uuid REFERENCES conversations (id) ON DELETE CASCADE,
    flow_id         text NOT NULL DEFAULT '',
    flow_type       text NOT NULL CHECK (flow_type IN ('navigate', 'data_exchange')),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_progress', 'completed', 'expired', 'failed')),
    session_data    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(session_data) = 'object'),
    response_data   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(response_data) = 'object'),
    expire_time     timestamptz NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX flow_sessions_user ON flow_sessions (user_id);
-- Every nullable reference below has an index, so that deleting a
-- conversation or message (PurgeUser) cascades without scanning the table.
CREATE INDEX flow_sessions_conversation ON flow_sessions (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE TRIGGER flow_sessions_update_time BEFORE UPDATE ON flow_sessions
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

CREATE TABLE call_logs (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    conversation_id  uuid REFERENCES conversations (id) ON DELETE CASCADE,
    provider_call_id text UNIQUE,
    direction        text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    status           text NOT NULL
                     CHECK (status IN ('ringing', 'answered', 'completed', 'missed', 'rejected', 'failed')),
    duration_seconds int NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
    end_reason       text NOT NULL DEFAULT '',
    start_time       timestamptz,
    end_time         timestamptz,
    metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    create_time      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_logs_user ON call_logs (user_id, id);
CREATE INDEX call_logs_conversation ON call_logs (conversation_id) WHERE conversation_id IS NOT NULL;

CREATE TABLE interactions (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL,
    conversation_id uuid REFERENCES conversations (id) ON DELETE CASCADE,
    message_id      uuid REFERENCES messages (id) ON DELETE CASCADE,
    type            text NOT NULL CHECK (type IN (
                        'cta_tap', 'button_reply', 'list_reply', 'flow_completion',
                        'call_accepted', 'call_rejected')),
    target          text NOT NULL DEFAULT '',
    payload         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX interactions_user ON interactions (user_id, id);
CREATE INDEX interactions_conversation ON interactions (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE INDEX interactions_message ON interactions (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE user_locations (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    message_id  uuid REFERENCES messages (id) ON DELETE CASCADE,
    latitude    double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    name        text NOT NULL DEFAULT '',
    address     text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_locations_user ON user_locations (user_id, id);
CREATE INDEX user_locations_message ON user_locations (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE tool_executions (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id      uuid REFERENCES messages (id) ON DELETE CASCADE,
    tool_name       text NOT NULL,
    input           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    output          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(output) = 'object'),
    status          text NOT NULL CHECK (status IN ('success', 'error', 'timeout')),
    latency_ms      int NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    tokens          int NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    error           text NOT NULL DEFAULT '',
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_executions_conversation ON tool_executions (conversation_id, id);
CREATE INDEX tool_executions_message ON tool_executions (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE agent_executions (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id      uuid REFERENCES messages (id) ON DELETE CASCADE,
    agent_name      text NOT NULL,
    model           text NOT NULL DEFAULT '',
    status          text NOT NULL CHECK (status IN ('success', 'error', 'timeout')),
    latency_ms      int NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    input_tokens    int NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens   int NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    error           text NOT NULL DEFAULT '',
    metadata        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_executions_conversation ON agent_executions (conversation_id, id);
CREATE INDEX agent_executions_message ON agent_executions (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE webhook_failures (
    id                  uuid PRIMARY KEY,
    request_id          text NOT NULL UNIQUE,
    source              text NOT NULL CHECK (source IN ('whatsapp', 'telegram', 'lemonsqueezy')),
    phone               text,
    user_id             uuid,
    provider_message_id text,
    -- At most 3 MiB: the request and its answer fit a 4 MiB gRPC message.
    raw_payload         bytea NOT NULL CHECK (octet_length(raw_payload) BETWEEN 1 AND 3145728),
    error               text NOT NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'retrying', 'resolved', 'abandoned')),
    retry_count         int NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    resolution          text NOT NULL DEFAULT '',
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_failures_status ON webhook_failures (status, id);
CREATE INDEX webhook_failures_user ON webhook_failures (user_id);
CREATE INDEX webhook_failures_phone ON webhook_failures (phone);
CREATE TRIGGER webhook_failures_update_time BEFORE UPDATE ON webhook_failures
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

CREATE TABLE idempotency_keys (
    operation   text NOT NULL,
    request_id  text NOT NULL,
    request     bytea NOT NULL,
    response    bytea,
    user_id     uuid,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, request_id)
);
CREATE INDEX idempotency_keys_create_time ON idempotency_keys (create_time);
CREATE INDEX idempotency_keys_user ON idempotency_keys (user_id);
