-- The identity context. Everything here is owned by mesh_users in schema users.

CREATE FUNCTION set_update_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.update_time := now();
    RETURN NEW;
END
$$;

CREATE TABLE users (
    id                     uuid PRIMARY KEY,
    phone                  text UNIQUE CHECK (phone ~ '^\+[1-9][0-9]{7,14}$'),
    whatsapp_profile_name  text NOT NULL DEFAULT '',
    display_name           text NOT NULL DEFAULT '',
    language               text NOT NULL DEFAULT 'es' CHECK (language ~ '^[a-z]{2}$'),
    timezone               text NOT NULL DEFAULT 'America/Bogota',
    preferences            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(preferences) = 'object'),
    companion_name         text NOT NULL DEFAULT '',
    preferred_checkin_time time,
    support_style          text NOT NULL DEFAULT '',
    is_active              boolean NOT NULL DEFAULT true,
    last_message_time      timestamptz,
    telegram_user_id       bigint UNIQUE,
    telegram_username      text NOT NULL DEFAULT '',
    create_time            timestamptz NOT NULL DEFAULT now(),
    update_time            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_last_message_time ON users (last_message_time);
CREATE TRIGGER users_update_time BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

CREATE TABLE link_tokens (
    token            text PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expire_time      timestamptz NOT NULL,
    redeem_time      timestamptz,
    telegram_user_id bigint,
    create_time      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX link_tokens_user ON link_tokens (user_id);

CREATE TABLE devices (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id   text NOT NULL,
    platform    text NOT NULL CHECK (platform IN ('ios', 'android', 'web')),
    push_token  text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id)
);
CREATE TRIGGER devices_update_time BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

-- A row exists only once a user changed something; readers fall back to the defaults.
CREATE TABLE agent_preferences (
    user_id                uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    enabled_agents         text[] NOT NULL,
    notification_frequency text NOT NULL CHECK (notification_frequency IN ('minimal', 'reduced', 'normal')),
    quiet_hours_start      time NOT NULL,
    quiet_hours_end        time NOT NULL,
    data_sharing_consent   boolean NOT NULL,
    transparency_level     text NOT NULL CHECK (transparency_level IN ('minimal', 'balanced', 'detailed')),
    language_preference    text NOT NULL,
    update_time            timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER agent_preferences_update_time BEFORE UPDATE ON agent_preferences
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

CREATE TABLE onboarding (
    user_id         uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    completed_steps text[] NOT NULL DEFAULT '{}',
    complete_time   timestamptz
);

CREATE TABLE feature_flags (
    name               text PRIMARY KEY,
    description        text NOT NULL DEFAULT '',
    enabled            boolean NOT NULL DEFAULT false,
    rollout_percentage integer NOT NULL DEFAULT 0 CHECK (rollout_percentage BETWEEN 0 AND 100),
    target_user_ids    uuid[] NOT NULL DEFAULT '{}',
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER feature_flags_update_time BEFORE UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

CREATE TABLE workspaces (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    owner_user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workspaces_owner ON workspaces (owner_user_id, id);
CREATE TRIGGER workspaces_update_time BEFORE UPDATE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

CREATE TABLE projects (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);
CREATE TRIGGER projects_update_time BEFORE UPDATE ON projects
    FOR EACH ROW EXECUTE FUNCTION set_update_time();

-- Answers of retryable RPCs by request_id (see mesh_runtime::idempotency).
CREATE TABLE idempotency_keys (
    operation   text NOT NULL,
    request_id  text NOT NULL,
    request     bytea NOT NULL,
    response    bytea,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, request_id)
);
