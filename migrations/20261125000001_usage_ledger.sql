-- One row per call (DESIGN §5). Rows are only ever inserted: the primary key makes replays idempotent
-- (INSERT ... ON CONFLICT (call_id) DO NOTHING), and the checks make a wrong row impossible to store.
CREATE TABLE usage_ledger (
    call_id             uuid PRIMARY KEY,
    upstream_request_id text,
    protocol            text        NOT NULL CHECK (protocol IN ('openai', 'dashscope')),
    model               text        NOT NULL,
    stream              boolean     NOT NULL,
    status              text        NOT NULL CHECK (status IN ('ok', 'upstream_error', 'client_aborted',
                                                               'upstream_aborted', 'rejected', 'proxy_error')),
    http_status         smallint    CHECK (http_status BETWEEN 100 AND 599),
    error_code          text,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL,
    -- Start of the clock hour (billing time zone) in which the call finished.
    billing_hour        timestamptz NOT NULL,
    input_tokens        bigint      NOT NULL CHECK (input_tokens >= 0),
    cached_tokens       bigint      NOT NULL CHECK (cached_tokens >= 0 AND cached_tokens <= input_tokens),
    output_tokens       bigint      NOT NULL CHECK (output_tokens >= 0),
    reasoning_tokens    bigint      NOT NULL CHECK (reasoning_tokens >= 0 AND reasoning_tokens <= output_tokens),
    answer_tokens       bigint      NOT NULL CHECK (answer_tokens = output_tokens - reasoning_tokens),
    usage_source        text        NOT NULL CHECK (usage_source IN ('reported', 'estimated', 'none')),
    priced              boolean     NOT NULL,
    price_version       text,
    -- CNY, exact: never rounded, never a float.
    cost_total          numeric,
    key_fingerprint     text        CHECK (key_fingerprint ~ '^[0-9a-f]{12}$'),
    key_hint            text,
    project             text,
    end_user            text,
    ttft_ms             double precision CHECK (ttft_ms >= 0),
    duration_ms         double precision NOT NULL CHECK (duration_ms >= 0),
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (finished_at >= started_at),
    CHECK (billing_hour <= finished_at AND finished_at < billing_hour + interval '1 hour'),
    CHECK ((priced AND cost_total IS NOT NULL AND cost_total >= 0 AND price_version IS NOT NULL)
        OR (NOT priced AND cost_total IS NULL AND price_version IS NULL))
);

CREATE INDEX usage_ledger_billing_hour_idx ON usage_ledger (billing_hour, model);
CREATE INDEX usage_ledger_finished_at_idx ON usage_ledger (finished_at);
