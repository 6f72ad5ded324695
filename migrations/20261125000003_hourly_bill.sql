-- The hourly bill (DESIGN §5): one row per (billing_hour, model, project, key_fingerprint), rolled up from
-- usage_ledger by recomputing whole hours. See src/bill.rs for how no committed ledger row can be missed.

-- Hours whose bill must be recomputed. The shipper adds one mark per hour of each batch in the same statement
-- as the batch's ledger insert (so a row and its mark commit together); the roller deletes the marks it sees
-- and recomputes those hours. Marks are only ever inserted or deleted: no row is contended.
CREATE TABLE bill_dirty_hours (
    billing_hour timestamptz NOT NULL
);

-- One row per billing hour the bill has seen: its state and revision.
CREATE TABLE bill_hours (
    billing_hour timestamptz PRIMARY KEY,
    state        text        NOT NULL CHECK (state IN ('open', 'provisional', 'closed')),
    -- 0 until the hour first closes; each re-roll of a closed hour (a late row) adds one.
    revision     integer     NOT NULL CHECK (revision >= 0),
    closed_at    timestamptz,
    rolled_at    timestamptz NOT NULL,
    CHECK ((state = 'closed') = (closed_at IS NOT NULL))
);

CREATE TABLE hourly_bill (
    billing_hour     timestamptz NOT NULL REFERENCES bill_hours (billing_hour),
    model            text        NOT NULL,
    project          text,
    key_fingerprint  text,
    calls            bigint      NOT NULL CHECK (calls > 0),
    unpriced_calls   bigint      NOT NULL CHECK (unpriced_calls >= 0),
    estimated_calls  bigint      NOT NULL CHECK (estimated_calls >= 0),
    input_tokens     bigint      NOT NULL,
    cached_tokens    bigint      NOT NULL,
    reasoning_tokens bigint      NOT NULL,
    answer_tokens    bigint      NOT NULL,
    output_tokens    bigint      NOT NULL,
    -- CNY, exact: the sum of the priced rows' cost_total (unpriced rows have none and are counted apart).
    cost_total       numeric     NOT NULL,
    state            text        NOT NULL CHECK (state IN ('open', 'provisional', 'closed')),
    revision         integer     NOT NULL,
    closed_at        timestamptz,
    UNIQUE NULLS NOT DISTINCT (billing_hour, model, project, key_fingerprint)
);

-- Hours already in the ledger are rolled on the first round.
INSERT INTO bill_dirty_hours (billing_hour) SELECT DISTINCT billing_hour FROM usage_ledger;
