-- Fleetwatch schema v1: vehicles, telemetry (day-partitioned) + latest
-- state, detections (seed 001 table, extended), frames.

CREATE TABLE vehicles (
    id            TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    kind          TEXT NOT NULL DEFAULT 'drone' CHECK (kind IN ('drone', 'vessel', 'other')),
    name          TEXT,
    -- SHA-256 of the vehicle's bearer token; the token itself is never stored.
    token_sha256  BYTEA NOT NULL UNIQUE,
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per (vehicle, sample time): the natural key that makes a
-- redelivered point a no-op (ON CONFLICT DO NOTHING).
CREATE TABLE telemetry (
    vehicle_id  TEXT NOT NULL,
    time        TIMESTAMPTZ NOT NULL,
    lat         DOUBLE PRECISION,
    lon         DOUBLE PRECISION,
    alt         DOUBLE PRECISION,
    speed       DOUBLE PRECISION,
    heading     DOUBLE PRECISION,
    battery     DOUBLE PRECISION,
    -- Further numeric fields the vehicle sent: {"rssi": -71, ...}.
    metrics     JSONB,
    -- When ingest accepted the point and when it became durable here; their
    -- difference is the ingest->queryable latency the load test reports.
    received_at TIMESTAMPTZ,
    stored_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (vehicle_id, time)
) PARTITION BY RANGE (time);

-- Creates the UTC-day partition holding `day` if it is missing. Safe to call
-- concurrently from several persistence replicas.
CREATE FUNCTION fleetwatch_ensure_telemetry_partition(day DATE) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    part TEXT := format('telemetry_%s', to_char(day, 'YYYYMMDD'));
    lo   TIMESTAMPTZ := (day::timestamp AT TIME ZONE 'UTC');
    hi   TIMESTAMPTZ := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fleetwatch.telemetry.partitions'));
    IF to_regclass(part) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    END IF;
    RETURN part;
END $$;

-- Drops day partitions that end before now() - keep_days; returns their names.
CREATE FUNCTION fleetwatch_drop_telemetry_partitions(keep_days INT) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    cutoff DATE := (now() AT TIME ZONE 'UTC')::date - keep_days;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fleetwatch.telemetry.partitions'));
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'telemetry' AND c.relname ~ '^telemetry_[0-9]{8}$'
    LOOP
        IF to_date(substr(r.relname, 11), 'YYYYMMDD') < cutoff THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            RETURN NEXT r.relname;
        END IF;
    END LOOP;
END $$;

-- Partitions for yesterday through a week ahead; persistence keeps creating
-- them ahead and on demand.
SELECT fleetwatch_ensure_telemetry_partition(((now() AT TIME ZONE 'UTC')::date + d))
FROM generate_series(-1, 7) AS d;

-- Latest known state per vehicle: each field keeps its newest non-null value.
CREATE TABLE vehicle_latest (
    vehicle_id  TEXT PRIMARY KEY,
    time        TIMESTAMPTZ NOT NULL,
    lat         DOUBLE PRECISION,
    lon         DOUBLE PRECISION,
    alt         DOUBLE PRECISION,
    speed       DOUBLE PRECISION,
    heading     DOUBLE PRECISION,
    battery     DOUBLE PRECISION,
    metrics     JSONB,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- The seed 001 `detections` table, extended with the natural key columns
-- (seq within the message, model) that make redelivery idempotent.
CREATE TABLE detections (
    id            BIGSERIAL PRIMARY KEY,
    drone_id      VARCHAR(64) NOT NULL,
    timestamp     TIMESTAMPTZ NOT NULL,
    class         VARCHAR(64) NOT NULL,
    confidence    FLOAT NOT NULL,
    x_min         FLOAT,
    y_min         FLOAT,
    x_max         FLOAT,
    y_max         FLOAT,
    frame_id      VARCHAR(128) NOT NULL DEFAULT '',
    object_id     VARCHAR(64),
    clip_s3_key   VARCHAR(256),
    processed     BOOLEAN DEFAULT FALSE,
    created_at    TIMESTAMPTZ DEFAULT now(),
    seq           INT NOT NULL DEFAULT 0,
    model_name    TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    source        TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX detections_natural_key
    ON detections (drone_id, timestamp, frame_id, model_name, model_version, seq);
CREATE INDEX idx_detections_ts ON detections (timestamp DESC);
CREATE INDEX idx_detections_drone ON detections (drone_id, timestamp DESC);

-- Stored video frames; the bytes live in the object store under object_key.
CREATE TABLE frames (
    vehicle_id    TEXT NOT NULL,
    time          TIMESTAMPTZ NOT NULL,
    frame_id      TEXT NOT NULL DEFAULT '',
    object_key    TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size_bytes    INT NOT NULL,
    width         INT,
    height        INT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, time)
);
