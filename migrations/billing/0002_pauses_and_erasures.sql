-- A free pause keeps the plan in force; PurgeUser remembers whom it erased;
-- an event naming them is recorded with the outcome 'erased'.

-- 'void' or 'free' while paused: a free pause keeps the plan in force.
ALTER TABLE subscriptions ADD COLUMN pause_mode text;

ALTER TABLE subscription_events DROP CONSTRAINT subscription_events_outcome_check;
ALTER TABLE subscription_events ADD CONSTRAINT subscription_events_outcome_check
    CHECK (outcome IN ('applied', 'stale', 'recorded', 'no_subscription', 'no_owner', 'erased'));

-- Users erased by PurgeUser, and their subscriptions: a later event naming
-- either (a renewal carries the checkout's custom_data) is stored stripped
-- of personal data and unlinked, and creates no subscription.
CREATE TABLE erased_users (
    user_id    uuid PRIMARY KEY,
    erase_time timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE erased_subscriptions (
    subscription_id text PRIMARY KEY,
    erase_time      timestamptz NOT NULL DEFAULT now()
);
