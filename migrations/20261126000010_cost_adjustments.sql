-- Price corrections (DESIGN §4; `deepseek-meter reprice`, src/billing/reprice.rs). The ledger stays
-- append-only: a call priced wrong gets an adjustment here (its old and new price version and cost, and the
-- delta), and the hourly bill adds the adjustments of its calls. A call's effective cost is its ledger
-- cost_total plus the deltas of its adjustments.
CREATE TABLE cost_adjustments (
    adjustment_id     bigserial   PRIMARY KEY,
    call_id           uuid        NOT NULL REFERENCES usage_ledger (call_id),
    -- Copied from the call's row: the bill's grouping, so the roller needs no join with the ledger.
    billing_hour      timestamptz NOT NULL,
    model             text        NOT NULL,
    project           text,
    key_fingerprint   text,
    old_price_version text,
    new_price_version text        NOT NULL,
    -- The effective cost before this adjustment (NULL: the call was unpriced) and after it.
    old_cost          numeric,
    new_cost          numeric     NOT NULL,
    delta             numeric     NOT NULL,
    -- One run of `reprice`: its adjustments come and go together.
    reprice_run       uuid        NOT NULL,
    created_at        timestamptz NOT NULL
);
CREATE INDEX cost_adjustments_hour ON cost_adjustments (billing_hour);
CREATE INDEX cost_adjustments_call ON cost_adjustments (call_id);

-- The bill's rows say how much of their cost_total is correction.
ALTER TABLE hourly_bill ADD COLUMN adjustment_yuan numeric NOT NULL DEFAULT 0;
ALTER TABLE hourly_model_bill ADD COLUMN adjustment_yuan numeric NOT NULL DEFAULT 0;
