-- The tables of SPEC.md ("PostgreSQL"). Written by the postgres sink; see src/sinks/postgres/.
--
-- Large text and JSON columns are compressed with lz4 (cheaper than the default pglz at the
-- same ratio for this data). Ids and merge bookkeeping columns compare byte-wise
-- (COLLATE "C"): indexes on them are cheaper, and the database and evalsink's in-memory merge
-- order them the same way.

-- Every event ever accepted, append-only; a replayed event is not inserted twice.
CREATE TABLE events (
    event_id    text COLLATE "C" NOT NULL PRIMARY KEY,
    type        text        NOT NULL,
    ts          timestamptz NOT NULL,
    eval_id     text COLLATE "C",
    tenant_id   text,
    -- The whole event, redacted, with large fields replaced by their reference.
    payload     jsonb COMPRESSION lz4 NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_eval_id ON events (eval_id) WHERE eval_id IS NOT NULL;
-- Time-range scans; BRIN stays tiny and cheap to maintain on append-mostly data.
CREATE INDEX events_ts ON events USING brin (ts);

-- One row per eval_id: the order-independent merge of its lifecycle events.
--
-- Each stage's fields come from one event of that stage: the one with the greatest
-- `{timestamp}|{event_id}` key, kept in the *_event columns. COMPLETED and FAILED also compete
-- for the terminal stage (ended_event), which sets status and ended_at. A later event never
-- clears a field, and replaying events leaves the row untouched.
CREATE TABLE evaluations (
    eval_id         text COLLATE "C" NOT NULL PRIMARY KEY,
    tenant_id       text COLLATE "C",
    status          text        NOT NULL
                    CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    code            text COMPRESSION lz4,
    language        text,
    engine          text,
    timeout         double precision,
    metadata        jsonb COMPRESSION lz4,
    executor_id     text,
    queued_at       timestamptz,
    started_at      timestamptz,
    ended_at        timestamptz,
    success         boolean,
    output          text COMPRESSION lz4,
    output_preview  text COMPRESSION lz4,
    output_size     bigint,
    output_sha256   text,
    output_ref      text,
    error           text COMPRESSION lz4,
    traceback       text COMPRESSION lz4,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    queued_event    text COLLATE "C",
    started_event   text COLLATE "C",
    completed_event text COLLATE "C",
    failed_event    text COLLATE "C",
    ended_event     text COLLATE "C"
);
CREATE INDEX evaluations_status ON evaluations (status, updated_at);
CREATE INDEX evaluations_queued_at ON evaluations (queued_at);
CREATE INDEX evaluations_tenant_id ON evaluations (tenant_id) WHERE tenant_id IS NOT NULL;

-- One row per CONTAINER_CREATED.
CREATE TABLE security_audit (
    event_id     text        NOT NULL PRIMARY KEY,
    container_id text        NOT NULL,
    eval_id      text        NOT NULL,
    image        text        NOT NULL,
    limits       jsonb COMPRESSION lz4 NOT NULL,
    ts           timestamptz NOT NULL,
    tenant_id    text
);
CREATE INDEX security_audit_eval_id ON security_audit (eval_id);
CREATE INDEX security_audit_ts ON security_audit (ts);

-- One row per RESOURCE_VIOLATION.
CREATE TABLE security_events (
    event_id       text        NOT NULL PRIMARY KEY,
    container_id   text        NOT NULL,
    violation_type text        NOT NULL,
    details        jsonb COMPRESSION lz4 NOT NULL,
    ts             timestamptz NOT NULL,
    tenant_id      text
);
CREATE INDEX security_events_container_id ON security_events (container_id);
CREATE INDEX security_events_ts ON security_events (ts);
