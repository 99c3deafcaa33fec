-- The billing context: Lemon Squeezy subscriptions and their audit log, the
-- AI usage ledger, usage counters behind quotas, and rate-limit windows.
-- Plans and prices are configuration (BILLING_PLANS_FILE,
-- BILLING_PRICES_FILE), not rows: every replica reads the same file.

CREATE FUNCTION set_update_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.update_time := now();
    RETURN NEW;
END
$$;

-- One row per Lemon Squeezy subscription; its owner is a user or a workspace
-- (from the checkout's custom_data). state_time is `updated_at` of the event
-- the state comes from: an older event is never applied over it.
CREATE TABLE subscriptions (
    subscription_id     text PRIMARY KEY,
    user_id             uuid,
    workspace_id        uuid,
    customer_id         text NOT NULL DEFAULT '',
    order_id            text NOT NULL DEFAULT '',
    product_id          text NOT NULL DEFAULT '',
    variant_id          text NOT NULL DEFAULT '',
    plan_id             text NOT NULL,
    status              text NOT NULL CHECK (status IN
                        ('on_trial', 'active', 'paused', 'past_due', 'unpaid', 'cancelled', 'expired')),
    renews_at           timestamptz,
    ends_at             timestamptz,
    trial_ends_at       timestamptz,
    customer_portal_url text NOT NULL DEFAULT '',
    last_payment_status text NOT NULL DEFAULT '',
    last_payment_time   timestamptz,
    test_mode           boolean NOT NULL DEFAULT false,
    state_time          timestamptz NOT NULL,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_one_owner CHECK ((user_id IS NULL) <> (workspace_id IS NULL))
);
CREATE TRIGGER subscriptions_update_time BEFORE UPDATE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION set_update_time();
CREATE INDEX subscriptions_user ON subscriptions (user_id, state_time DESC) WHERE user_id IS NOT NULL;
CREATE INDEX subscriptions_workspace ON subscriptions (workspace_id, state_time DESC) WHERE workspace_id IS NOT NULL;

-- Every event received, once: a repeat delivery (the same event name and
-- body) hits the unique digest and changes nothing.
CREATE TABLE subscription_events (
    id              uuid PRIMARY KEY,
    digest          bytea NOT NULL UNIQUE,
    event_name      text NOT NULL,
    subscription_id text NOT NULL DEFAULT '',
    user_id         uuid,
    workspace_id    uuid,
    outcome         text NOT NULL CHECK (outcome IN
                    ('applied', 'stale', 'recorded', 'no_subscription', 'no_owner')),
    payload         jsonb NOT NULL,
    -- Set when PurgeUser stripped the payload of personal data.
    redact_time     timestamptz,
    receive_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_events_time ON subscription_events (receive_time DESC, id DESC);
CREATE INDEX subscription_events_subscription ON subscription_events (subscription_id, receive_time DESC, id DESC);
CREATE INDEX subscription_events_user ON subscription_events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX subscription_events_workspace ON subscription_events (workspace_id) WHERE workspace_id IS NOT NULL;

-- The AI usage ledger: one row per call, once per request_id. local_day is
-- the user's day when it was recorded (daily reports follow it).
CREATE TABLE ai_usage (
    id              uuid PRIMARY KEY,
    request_id      text NOT NULL UNIQUE,
    user_id         uuid NOT NULL,
    conversation_id uuid,
    provider        text NOT NULL,
    model           text NOT NULL,
    task_type       text NOT NULL CHECK (task_type IN
                    ('chat', 'transcription', 'ocr', 'embeddings', 'image')),
    input_tokens    bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens   bigint NOT NULL CHECK (output_tokens >= 0),
    latency_ms      bigint NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    cost_usd        numeric(20, 10) NOT NULL CHECK (cost_usd >= 0),
    cost_source     text NOT NULL CHECK (cost_source IN ('given', 'price_table')),
    local_day       date NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_usage_user_day ON ai_usage (user_id, local_day);
CREATE INDEX ai_usage_time ON ai_usage (create_time);

-- What each user consumed of each feature in each period: 'YYYY-MM-DD' (the
-- user's local day), 'YYYY-MM' (local month) or 'total' (never resets).
-- ConsumeQuota adds to a row only while the sum stays within the limit, in
-- one statement that holds the row's lock: concurrent callers never pass it.
CREATE TABLE usage_counters (
    user_id uuid NOT NULL,
    feature text NOT NULL CHECK (feature IN
            ('inbound_messages', 'ai_tokens', 'ai_cost_usd', 'memories', 'documents')),
    period  text NOT NULL,
    used    numeric(24, 10) NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (user_id, feature, period)
);

-- Calls per (key, endpoint) per fixed window; a call is judged over a
-- sliding window (this window plus the previous one's share).
CREATE TABLE rate_limit_windows (
    key          text NOT NULL,
    endpoint     text NOT NULL,
    window_start timestamptz NOT NULL,
    hits         bigint NOT NULL CHECK (hits >= 0),
    -- Two windows after its start nothing reads it any more.
    expire_time  timestamptz NOT NULL,
    PRIMARY KEY (key, endpoint, window_start)
);
CREATE INDEX rate_limit_windows_expire ON rate_limit_windows (expire_time);

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
