-- The platform as it is in late 2026 (reference bailian-2026.md; issue 22).
--
-- usage_ledger: the Responses and Anthropic protocols; explicit cache writes as their own token class (a part
-- of input_tokens, apart from the cache reads); the time-of-day period of the price (peak / off-peak) beside
-- its version; the input part of the cost (the platform's bill shows input and output money apart, and
-- reconciliation compares them with what each call was actually priced at); and whether the reasoning share
-- was estimated (the Anthropic API reports no reasoning count). Existing rows: no cache writes, no period, no
-- input part (reconciliation splits their cost by the book), reasoning as it was.
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_protocol_check;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_protocol_check
    CHECK (protocol IN ('openai', 'dashscope', 'responses', 'anthropic'));
ALTER TABLE usage_ledger
    ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0
        CHECK (cache_creation_tokens >= 0 AND cached_tokens + cache_creation_tokens <= input_tokens),
    ADD COLUMN price_period text,
    ADD COLUMN cost_input numeric CHECK (cost_input >= 0 AND cost_input <= cost_total),
    ADD COLUMN reasoning_estimated boolean NOT NULL DEFAULT false;

-- The bill carries the new token class and the price period of its rows (a billing hour has one period per
-- model: periods change on whole hours).
ALTER TABLE hourly_bill
    ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN price_period text;
ALTER TABLE hourly_model_bill
    ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN price_period text;

-- A price correction says which period each side was priced in, and how much of its delta is input money.
ALTER TABLE cost_adjustments
    ADD COLUMN old_price_period text,
    ADD COLUMN new_price_period text,
    ADD COLUMN delta_input numeric;
