-- Events past the retention are deleted once none of their deliveries is pending: found by
-- time, and their deliveries (deleted with them) by event.
CREATE INDEX webhook_events_by_at ON webhook_events(at);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries(event_id);
