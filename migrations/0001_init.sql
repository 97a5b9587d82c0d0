-- Herald's durable record (docs/operations.md, "What is stored where").

CREATE TABLE IF NOT EXISTS virtual_keys (
    id               BIGINT PRIMARY KEY CHECK (id > 0),
    key_hash         TEXT NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    name             TEXT NOT NULL,
    group_id         BIGINT,
    enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    expires_at       TIMESTAMPTZ,
    is_admin         BOOLEAN NOT NULL DEFAULT FALSE,
    budget           NUMERIC,
    budget_period    TEXT NOT NULL DEFAULT 'total' CHECK (budget_period IN ('total', 'daily', 'monthly')),
    -- Per-key override of HERALD_BUDGET_THRESHOLDS (percent); NULL = the default list.
    alert_thresholds INTEGER[],
    current_spend    NUMERIC NOT NULL DEFAULT 0,
    -- Source time of the SpendUpdated that set current_spend, so a late event cannot roll it back.
    spend_at         TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per (key, budget period, threshold) that has fired or been passed over by a jump.
CREATE TABLE IF NOT EXISTS budget_alert_state (
    key_id          BIGINT NOT NULL,
    period_start    TIMESTAMPTZ NOT NULL,
    threshold       INTEGER NOT NULL,
    -- Times this threshold fired (or was marked) in the period; a re-arm lets it fire as generation + 1.
    generation      INTEGER NOT NULL,
    armed           BOOLEAN NOT NULL DEFAULT FALSE,
    source_time     TIMESTAMPTZ NOT NULL,
    budget          NUMERIC NOT NULL,
    -- Alert published for the current generation; NULL when marked without an alert.
    alert_id        TEXT,
    source_event_id TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period_start, threshold)
);

-- Every alert fired. The unique key makes firing exactly-once across consumer instances;
-- published_at stays NULL until the backplane has it, so a consumer that dies in between
-- leaves it for the next one to publish.
CREATE TABLE IF NOT EXISTS budget_alerts (
    alert_id        TEXT PRIMARY KEY,
    key_id          BIGINT NOT NULL,
    period_start    TIMESTAMPTZ NOT NULL,
    threshold       INTEGER NOT NULL,
    generation      INTEGER NOT NULL,
    source_event_id TEXT NOT NULL,
    -- The outbound event as JSON text (exact decimal digits).
    event           TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ,
    UNIQUE (key_id, period_start, threshold, generation)
);

CREATE INDEX IF NOT EXISTS budget_alerts_unpublished ON budget_alerts (key_id) WHERE published_at IS NULL;
