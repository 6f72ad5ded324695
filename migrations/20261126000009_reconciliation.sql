-- Reconciliation with the platform's bill (DESIGN §11; src/reconcile/).

-- The platform's hourly bill-detail lines, as imported by `deepseek-meter reconcile --bill FILE`. One row per
-- line key: importing a file twice changes nothing, and overlapping exports merge (a line exported again with
-- other figures — a restatement — takes the newer figures).
CREATE TABLE platform_bill (
    billing_hour  timestamptz NOT NULL,
    -- The console's API-key ID; '' for a console call (no key) or the older Instance ID form.
    key_id        text        NOT NULL,
    workspace     text        NOT NULL,
    model         text        NOT NULL,
    token_type    text        NOT NULL,
    channel       text        NOT NULL,
    tokens        bigint      NOT NULL CHECK (tokens >= 0),
    amount        numeric     NOT NULL,
    imported_at   timestamptz NOT NULL,
    -- SHA-256 (hex) of the export file the figures came from.
    source_sha256 text        NOT NULL,
    PRIMARY KEY (billing_hour, key_id, workspace, model, token_type, channel)
);

-- Each reconciliation: its period, verdict counts, totals and drift by model (the newest one is what
-- deepseek_meter_reconcile_drift_yuan shows).
CREATE TABLE reconcile_runs (
    run_id         bigserial   PRIMARY KEY,
    ran_at         timestamptz NOT NULL,
    period_from    timestamptz NOT NULL,
    period_to      timestamptz NOT NULL,
    verdicts       jsonb       NOT NULL,
    drift_by_model jsonb       NOT NULL,
    ledger_yuan    numeric     NOT NULL,
    bill_yuan      numeric     NOT NULL,
    total_matches  boolean     NOT NULL
);

-- The bill's hours and per-model rows say when they were last reconciled, how, and the drift (ledger minus
-- platform bill, CNY).
ALTER TABLE bill_hours
    ADD COLUMN reconciled_at timestamptz, ADD COLUMN reconcile_verdict text, ADD COLUMN reconcile_drift_yuan numeric;
ALTER TABLE hourly_model_bill
    ADD COLUMN reconciled_at timestamptz, ADD COLUMN reconcile_verdict text, ADD COLUMN reconcile_drift_yuan numeric;
