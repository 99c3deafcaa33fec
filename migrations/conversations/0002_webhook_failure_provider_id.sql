-- A status for a provider message id no stored message has is deferred, and
-- the gateway records it as a dead letter (source = the channel,
-- provider_message_id = the id). When a message with that id is stored and
-- the deferred statuses are applied, the open failures of that (source, id)
-- are resolved in the same transaction: this finds them.
CREATE INDEX webhook_failures_open_provider_id ON webhook_failures (source, provider_message_id)
    WHERE status IN ('pending', 'retrying');
