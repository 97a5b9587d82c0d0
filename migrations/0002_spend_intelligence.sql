-- Spend intelligence (docs/events.md, "Spend intelligence"): burn rate per key and period,
-- forecast and spike alerts, the spend summary's transactions and breakdown.

ALTER TABLE virtual_keys ADD COLUMN IF NOT EXISTS spike_alerts BOOLEAN NOT NULL DEFAULT FALSE;

-- Forecast and spike alerts share budget_alerts (and its publish-once machinery) with the
-- threshold alerts: `kind` tells them apart; their `threshold` is 0.
ALTER TABLE budget_alerts ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'threshold'
    CHECK (kind IN ('threshold', 'forecast', 'spike'));
ALTER TABLE budget_alerts DROP CONSTRAINT IF EXISTS budget_alerts_key_id_period_start_threshold_generation_key;
ALTER TABLE budget_alerts ADD CONSTRAINT budget_alerts_once UNIQUE (key_id, period_start, kind, threshold, generation);

-- One row per (key, budget period): the decayed sums the rates come from, the forecast and spike
-- alert state, and the rate as of the latest event (what GetSpendSummary shows).
CREATE TABLE IF NOT EXISTS spend_rate_state (
    key_id               BIGINT NOT NULL,
    period_start         TIMESTAMPTZ NOT NULL,
    budget_period        TEXT NOT NULL CHECK (budget_period IN ('total', 'daily', 'monthly')),
    first_time           TIMESTAMPTZ NOT NULL,
    -- Source time and running total of the newest event taken; an event not newer changes nothing.
    last_time            TIMESTAMPTZ NOT NULL,
    last_total           NUMERIC NOT NULL,
    events               INTEGER NOT NULL,
    spike_sum            DOUBLE PRECISION NOT NULL,
    window_sum           DOUBLE PRECISION NOT NULL,
    baseline_sum         DOUBLE PRECISION NOT NULL,
    forecast_generation  INTEGER NOT NULL,
    forecast_active      BOOLEAN NOT NULL,
    forecast_budget      NUMERIC,
    spike_generation     INTEGER NOT NULL,
    spike_active         BOOLEAN NOT NULL,
    burn_rate_per_hour   NUMERIC NOT NULL,
    trend                TEXT NOT NULL CHECK (trend IN ('up', 'down', 'stable')),
    projected_exhaustion TIMESTAMPTZ,
    exceeds_budget       BOOLEAN,
    window_minutes       INTEGER NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period_start)
);

-- Every SpendUpdated by id (a repeat is recognised and adds nothing), newest kept per key.
CREATE TABLE IF NOT EXISTS spend_transactions (
    event_id     TEXT PRIMARY KEY,
    key_id       BIGINT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    source_time  TIMESTAMPTZ NOT NULL,
    amount       NUMERIC NOT NULL,
    total_spend  NUMERIC NOT NULL,
    model        TEXT,
    provider     TEXT,
    request_id   TEXT
);
CREATE INDEX IF NOT EXISTS spend_transactions_recent ON spend_transactions (key_id, period_start, source_time DESC);

-- Spend per model and per provider in a key's period ('' = the events that named none).
CREATE TABLE IF NOT EXISTS spend_breakdown (
    key_id       BIGINT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    dimension    TEXT NOT NULL CHECK (dimension IN ('model', 'provider')),
    name         TEXT NOT NULL,
    spend        NUMERIC NOT NULL,
    requests     BIGINT NOT NULL,
    PRIMARY KEY (key_id, period_start, dimension, name)
);
