-- Reports of the hourly bill (issue 11). Delivery of each closed hour's report: an outbox in Postgres, so
-- a restart neither loses nor repeats a delivery and several sidecars deliver each (hour, revision) once.
-- See src/billing/delivery.rs.

-- Every destination a sidecar has delivered to: "dir:<id>" or "webhook:<id>", the id a SHA-256 prefix of the
-- directory or URL (a webhook URL may carry a secret: it is never stored), and when it was first configured.
-- Each closing of an hour from then on is delivered there (no backfill of older history).
CREATE TABLE report_destinations (
    destination text        PRIMARY KEY,
    first_seen  timestamptz NOT NULL
);

CREATE TABLE bill_deliveries (
    billing_hour    timestamptz NOT NULL,
    revision        integer     NOT NULL,
    destination     text        NOT NULL,
    enqueued_at     timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- delivered: the report reached the destination; superseded: a newer revision came before it could.
    outcome         text        CHECK (outcome IN ('delivered', 'superseded')),
    finished_at     timestamptz,
    last_error      text,
    PRIMARY KEY (billing_hour, revision, destination),
    CHECK ((outcome IS NULL) = (finished_at IS NULL))
);

-- What the deliverers look for: the pending few, never the delivered history.
CREATE INDEX bill_deliveries_pending ON bill_deliveries (next_attempt_at) WHERE outcome IS NULL;

-- The roller's per-round search for hours to move on: only the hours not yet closed.
CREATE INDEX bill_hours_unclosed ON bill_hours (billing_hour) WHERE state <> 'closed';

-- The bill per (billing_hour, model): hourly_bill's rows of each hour summed by model, rewritten by the roller
-- in the same transaction as the hour's hourly_bill rows. Reports that group by model only (or not at all)
-- read it: a month by model is 720 × models rows, whatever the number of projects and keys.
CREATE TABLE hourly_model_bill (
    billing_hour     timestamptz NOT NULL REFERENCES bill_hours (billing_hour),
    model            text        NOT NULL,
    calls            bigint      NOT NULL CHECK (calls > 0),
    unpriced_calls   bigint      NOT NULL CHECK (unpriced_calls >= 0),
    estimated_calls  bigint      NOT NULL CHECK (estimated_calls >= 0),
    input_tokens     bigint      NOT NULL,
    cached_tokens    bigint      NOT NULL,
    reasoning_tokens bigint      NOT NULL,
    answer_tokens    bigint      NOT NULL,
    output_tokens    bigint      NOT NULL,
    cost_total       numeric     NOT NULL,
    state            text        NOT NULL CHECK (state IN ('open', 'provisional', 'closed')),
    revision         integer     NOT NULL,
    closed_at        timestamptz,
    PRIMARY KEY (billing_hour, model)
);
INSERT INTO bill_dirty_hours SELECT billing_hour FROM bill_hours;
