-- Delivery of each closed hour's report (issue 11): an outbox in Postgres, so a restart neither loses nor
-- repeats a delivery and several sidecars deliver each (hour, revision) once. See src/billing/delivery.rs.

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
