-- Wakes the outbox publisher (which may run on another replica) when events
-- are queued: one notification per committed transaction that inserted
-- into the outbox (Postgres folds identical notifications of a transaction
-- into one and delivers them at commit, never for a rolled-back one).
CREATE FUNCTION incident_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetwatch_incident_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER incident_outbox_notify
    AFTER INSERT ON incident_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION incident_outbox_notify();
