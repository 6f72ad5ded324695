-- Budgets (DESIGN §8): each threshold crossing, once per budget, window and threshold across restarts and
-- sidecars (the primary key), with its alert's delivery to --alert-webhook. See src/budget/store.rs.
CREATE TABLE budget_alerts (
    budget          text        NOT NULL,
    window_start    timestamptz NOT NULL,
    threshold       numeric     NOT NULL,
    window_end      timestamptz NOT NULL,
    -- The alert as POSTed: budget, scope, window, limit, spent, threshold.
    payload         jsonb       NOT NULL,
    raised_at       timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- Set when POSTed, or at once when the sidecar that raised it has no --alert-webhook.
    delivered_at    timestamptz,
    last_error      text,
    PRIMARY KEY (budget, window_start, threshold)
);
CREATE INDEX budget_alerts_pending ON budget_alerts (next_attempt_at) WHERE delivered_at IS NULL;
