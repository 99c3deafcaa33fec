-- A second round of purges once the first is done and writes already under
-- way when the erasure began have ended (USERS_ERASURE_SETTLE_SECONDS): a
-- caller that looked the user up just before leaves nothing behind.
ALTER TABLE erasures ADD COLUMN sweep_after timestamptz;
ALTER TABLE erasure_steps ADD COLUMN sweep_time timestamptz;
