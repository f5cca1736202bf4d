-- Incident service: rules, per-(rule, vehicle) evaluation state, incidents
-- (the seed 001 `incidents` table extended with lifecycle columns), their
-- audit trail, evidence clips and the event outbox.

-- A rule applies to every vehicle (vehicle_id NULL, a fleet rule) or to one
-- vehicle. A vehicle rule with the same name as a fleet rule replaces it for
-- that vehicle. `params` depends on `kind` (see services/incident/README.md).
CREATE TABLE incident_rules (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    vehicle_id  TEXT,
    kind        TEXT NOT NULL CHECK (kind IN ('threshold', 'geofence', 'link_loss', 'detection')),
    severity    SMALLINT NOT NULL CHECK (severity BETWEEN 1 AND 4),
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    params      JSONB NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX incident_rules_scope_name ON incident_rules (COALESCE(vehicle_id, ''), name);

-- What a rule needs to remember about one vehicle between records. Every
-- transition is keyed on sample times (last_point_us): a redelivered or
-- older sample is ignored, so replays and restarts cannot double-count.
CREATE TABLE incident_rule_state (
    rule_id          BIGINT NOT NULL REFERENCES incident_rules (id) ON DELETE CASCADE,
    vehicle_id       TEXT NOT NULL,
    -- The rule's condition currently holds (an incident was triggered).
    active           BOOLEAN NOT NULL DEFAULT FALSE,
    -- Threshold/geofence: first sample time of the current violating run.
    pending_since_us BIGINT,
    -- Detection: matching frames in a row.
    consecutive      INT NOT NULL DEFAULT 0,
    -- Detection: time of the last matching frame.
    last_match_us    BIGINT,
    -- Newest sample applied to this state (-1: none; 0 is a valid time).
    last_point_us    BIGINT NOT NULL DEFAULT -1,
    -- Link loss: when the vehicle was last heard from (ingest clock).
    last_seen_us     BIGINT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (rule_id, vehicle_id)
);

-- Seed 001 columns first (id, detection_id, incident_type, severity, status,
-- assigned_to, created_at), then the lifecycle and grouping columns.
CREATE TABLE incidents (
    id                  BIGSERIAL PRIMARY KEY,
    detection_id        BIGINT,
    incident_type       VARCHAR(64) NOT NULL,
    severity            SMALLINT NOT NULL CHECK (severity BETWEEN 1 AND 4),
    status              VARCHAR(32) NOT NULL DEFAULT 'open'
                        CHECK (status IN ('open', 'acknowledged', 'resolved')),
    assigned_to         VARCHAR(128),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    vehicle_id          TEXT NOT NULL,
    rule_id             BIGINT NOT NULL REFERENCES incident_rules (id),
    rule_kind           TEXT NOT NULL,
    title               TEXT NOT NULL,
    detail              TEXT NOT NULL DEFAULT '',
    -- The condition stopped holding; the incident stays until an operator resolves it.
    cleared             BOOLEAN NOT NULL DEFAULT FALSE,
    cleared_at          TIMESTAMPTZ,
    -- Triggers merged into this incident (1 = the opening one).
    trigger_count       BIGINT NOT NULL DEFAULT 1,
    first_seen          TIMESTAMPTZ NOT NULL,
    last_seen           TIMESTAMPTZ NOT NULL,
    acknowledged_by     TEXT,
    acknowledged_at     TIMESTAMPTZ,
    resolved_by         TEXT,
    resolved_at         TIMESTAMPTZ,
    -- Best evidence so far: the frame (persistence's key) and its boxes.
    frame_key           TEXT,
    boxes               JSONB,
    evidence_confidence REAL,
    evidence_time_us    BIGINT,
    -- Evidence (clip objects) must be kept until then; NULL while unresolved = keep.
    retain_until        TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
-- The grouping invariant, enforced by the database for every replica:
-- at most one unresolved incident per (vehicle, rule).
CREATE UNIQUE INDEX incidents_one_unresolved ON incidents (vehicle_id, rule_id)
    WHERE status <> 'resolved';
CREATE INDEX incidents_vehicle ON incidents (vehicle_id, id DESC);
CREATE INDEX incidents_status ON incidents (status, id DESC);

-- Every transition: who, when, what.
CREATE TABLE incident_audit (
    id          BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    event_id    UUID NOT NULL UNIQUE,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    from_status TEXT,
    to_status   TEXT,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX incident_audit_incident ON incident_audit (incident_id, id);

-- Events written in the same transaction as the change they describe; the
-- publisher sends unpublished rows to `fleet.incidents.v1` and marks them.
CREATE TABLE incident_outbox (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    vehicle_id   TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at TIMESTAMPTZ
);
CREATE INDEX incident_outbox_unpublished ON incident_outbox (seq) WHERE published_at IS NULL;

-- A clip: frames from `from_us` to `to_us` around the trigger, copied under
-- `prefix` (`<vehicle>/YYYY/MM/DD/clip_<trigger_us>/`), separate from the
-- frame keys persistence's retention may delete.
CREATE TABLE incident_clips (
    id          BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL UNIQUE REFERENCES incidents (id) ON DELETE CASCADE,
    vehicle_id  TEXT NOT NULL,
    center_us   BIGINT NOT NULL,
    from_us     BIGINT NOT NULL,
    to_us       BIGINT NOT NULL,
    prefix      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX incident_clips_window ON incident_clips (vehicle_id, to_us);

CREATE TABLE incident_clip_frames (
    clip_id      BIGINT NOT NULL REFERENCES incident_clips (id) ON DELETE CASCADE,
    time_us      BIGINT NOT NULL,
    object_key   TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes   INT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (clip_id, time_us)
);

-- Shipped defaults (fleet-wide); operators change them over gRPC.
INSERT INTO incident_rules (name, kind, severity, params, description) VALUES
    ('battery_low', 'threshold', 3,
     '{"field": "battery", "op": "below", "trigger": 20, "clear": 25, "for_secs": 10}',
     'battery below 20 % for 10 s; clears above 25 %'),
    ('link_loss', 'link_loss', 3,
     '{"timeout_secs": 30}',
     'no telemetry for 30 s; clears when telemetry resumes'),
    ('no_helmet', 'detection', 3,
     '{"classes": ["no_helmet"], "min_confidence": 0.5, "min_consecutive_frames": 1, "clear_after_secs": 30}',
     'seed 001: a person without a helmet'),
    ('intrusion', 'detection', 4,
     '{"classes": ["intrusion"], "min_confidence": 0.5, "min_consecutive_frames": 2, "clear_after_secs": 30}',
     'an intrusion seen in two frames in a row');
