-- Stored answers name the user they are about, so erasing a user erases them
-- (a CreateUser answer holds the phone and names), and old ones expire.
ALTER TABLE idempotency_keys ADD COLUMN user_id uuid;
CREATE INDEX idempotency_keys_user ON idempotency_keys (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX idempotency_keys_age ON idempotency_keys (create_time);
