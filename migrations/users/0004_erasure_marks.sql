-- An erasure marks its user at once: lookups that feed new data into the
-- mesh and writes to the user refuse them from then on. It keeps the phone
-- it purges by only while it runs (conversations finds phone-only dead
-- letters with it), and a request id names one erasure.
ALTER TABLE users ADD COLUMN erase_time timestamptz;
ALTER TABLE erasures ADD COLUMN phone text;
ALTER TABLE erasures ADD CONSTRAINT erasures_phone_only_while_running
    CHECK (state = 'running' OR phone IS NULL);
CREATE UNIQUE INDEX erasures_request_id ON erasures (request_id) WHERE request_id <> '';
