-- Erasing a user across the mesh (users.DeleteUser): one erasure per user,
-- one step per context. The rows keep the user id and the counts only, as the
-- record that the erasure happened; they outlive the user on purpose.

CREATE TABLE erasures (
    id                uuid PRIMARY KEY,
    -- One erasure per user: a repeated DeleteUser finds this one.
    user_id           uuid NOT NULL UNIQUE,
    request_id        text NOT NULL DEFAULT '',
    state             text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    -- When a worker should next call the contexts that have not answered.
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    create_time       timestamptz NOT NULL DEFAULT now(),
    complete_time     timestamptz,
    CHECK ((state = 'done') = (complete_time IS NOT NULL))
);
CREATE INDEX erasures_due ON erasures (next_attempt_time) WHERE state = 'running';

CREATE TABLE erasure_steps (
    erasure_id        uuid NOT NULL REFERENCES erasures (id) ON DELETE CASCADE,
    context           text NOT NULL
                      CHECK (context IN ('conversations', 'memory', 'scheduler', 'billing', 'users')),
    position          smallint NOT NULL,
    deleted           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(deleted) = 'object'),
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text NOT NULL DEFAULT '',
    last_attempt_time timestamptz,
    complete_time     timestamptz,
    PRIMARY KEY (erasure_id, context)
);
