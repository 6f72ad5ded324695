-- The ledger at a billion rows a month (issues 23 and 24): a partitioned ledger, rollups kept in the same
-- statement as each ledger insert (so nothing that runs every second reads the ledger), effective cost defined
-- once, budget counters for every budget, and outboxes claimed with a lease.

-- ---- 1. usage_ledger, partitioned by billing_hour (calendar months, UTC) -----------------------------------
-- The existing table becomes the first partition as it is (no copy: attaching scans it once to check the
-- bound). The primary key becomes (call_id, billing_hour): a call's billing hour is fixed when its record is
-- built (and journaled), so inserts stay idempotent. Retention drops whole partitions (src/ledger/partitions.rs).
ALTER TABLE cost_adjustments DROP CONSTRAINT cost_adjustments_call_id_fkey;
DROP TRIGGER usage_ledger_budget_charge ON usage_ledger;
DROP TRIGGER usage_ledger_no_update_or_delete ON usage_ledger;
DROP TRIGGER usage_ledger_no_truncate ON usage_ledger;
ALTER TABLE usage_ledger RENAME TO usage_ledger_legacy;
ALTER TABLE usage_ledger_legacy DROP CONSTRAINT usage_ledger_pkey;
ALTER TABLE usage_ledger_legacy ADD CONSTRAINT usage_ledger_legacy_pkey PRIMARY KEY (call_id, billing_hour);
-- Nothing reads these any more: reports, budgets and reconciliation read rollups; what reads the ledger reads
-- one billing hour at a time (reprice, the close-time audit) or one call (its id and hour).
DROP INDEX usage_ledger_billing_hour_idx;
DROP INDEX usage_ledger_finished_at_idx;

CREATE TABLE usage_ledger (LIKE usage_ledger_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (billing_hour);
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_pkey PRIMARY KEY (call_id, billing_hour);
CREATE INDEX usage_ledger_billing_hour_idx ON usage_ledger (billing_hour);

DO $$
DECLARE
    upper timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM usage_ledger_legacy) THEN
        -- A new database: nothing to keep, so no legacy partition; every month gets its own.
        DROP TABLE usage_ledger_legacy;
        RETURN;
    END IF;
    -- The legacy partition holds everything up to the start of the month after its newest row (or after now,
    -- since this month's rows are in it).
    SELECT (date_trunc('month', greatest(max(billing_hour), now()) AT TIME ZONE 'UTC')
            + interval '1 month') AT TIME ZONE 'UTC'
      INTO upper FROM usage_ledger_legacy;
    EXECUTE format('ALTER TABLE usage_ledger ATTACH PARTITION usage_ledger_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                   upper);
END $$;
-- Rows whose month has no partition (created ahead by every sidecar, so only after a long outage, or a row
-- older than a retention that dropped its month) are kept here rather than refused.
CREATE TABLE usage_ledger_default PARTITION OF usage_ledger DEFAULT;

-- Partitions are tables the ledger's owner owns: the sidecar (which may run as an insert-only role) creates and
-- drops them through these two functions, which run as their owner and do nothing else. Neither is anyone's
-- but the owner's until granted (README, least privilege).
CREATE FUNCTION ledger_partitions_ahead(p_now timestamptz, p_ahead integer) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    first date := (date_trunc('month', p_now AT TIME ZONE 'UTC') - interval '1 month')::date;
    m date;
    lo timestamptz;
    hi timestamptz;
    tbl text;
    created text[] := '{}';
BEGIN
    FOR i IN 0 .. p_ahead + 1 LOOP
        m := (first + make_interval(months => i))::date;
        tbl := format('usage_ledger_p%s', to_char(m, 'YYYYMM'));
        IF to_regclass(tbl) IS NULL THEN
            lo := m::timestamp AT TIME ZONE 'UTC';
            hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF usage_ledger FOR VALUES FROM (%L) TO (%L)', tbl, lo, hi);
                created := created || tbl;
            EXCEPTION
                WHEN invalid_object_definition THEN
                    NULL; -- the first partition (the migrated ledger) already covers this month
                WHEN check_violation THEN
                    -- The default partition holds rows of this month (they came before its partition): the month
                    -- gets its partition with them, the default keeps the rest. Rows are copied, never edited.
                    ALTER TABLE usage_ledger DETACH PARTITION usage_ledger_default;
                    EXECUTE format('CREATE TABLE %I PARTITION OF usage_ledger FOR VALUES FROM (%L) TO (%L)', tbl, lo, hi);
                    EXECUTE format('INSERT INTO %I SELECT * FROM usage_ledger_default
                                    WHERE billing_hour >= %L AND billing_hour < %L', tbl, lo, hi);
                    CREATE TABLE usage_ledger_default_next (LIKE usage_ledger_default INCLUDING ALL);
                    EXECUTE format('INSERT INTO usage_ledger_default_next SELECT * FROM usage_ledger_default
                                    WHERE NOT (billing_hour >= %L AND billing_hour < %L)', lo, hi);
                    DROP TABLE usage_ledger_default;
                    ALTER TABLE usage_ledger_default_next RENAME TO usage_ledger_default;
                    ALTER TABLE usage_ledger ATTACH PARTITION usage_ledger_default DEFAULT;
                    created := created || tbl;
            END;
        END IF;
    END LOOP;
    RETURN created;
END $$;

-- Drops every partition whose months all ended before p_cutoff (never the default one); one sidecar at a time
-- (the roller's advisory lock).
CREATE FUNCTION ledger_retire(p_cutoff timestamptz) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    r record;
    dropped text[] := '{}';
BEGIN
    IF NOT pg_try_advisory_xact_lock(x'0064736d62696c6c'::bigint) THEN
        RETURN dropped;
    END IF;
    FOR r IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_ledger'::regclass
    LOOP
        IF r.upper IS NOT NULL AND r.upper <= p_cutoff THEN
            EXECUTE format('ALTER TABLE usage_ledger DETACH PARTITION %I', r.relname);
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped || r.relname::text;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

REVOKE EXECUTE ON FUNCTION ledger_partitions_ahead(timestamptz, integer), ledger_retire(timestamptz) FROM PUBLIC;
SELECT ledger_partitions_ahead(now(), 2);

CREATE TRIGGER usage_ledger_no_update_or_delete
    BEFORE UPDATE OR DELETE ON usage_ledger
    FOR EACH ROW EXECUTE FUNCTION usage_ledger_append_only();
CREATE TRIGGER usage_ledger_no_truncate
    BEFORE TRUNCATE ON usage_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION usage_ledger_append_only();

-- ---- 2. Effective cost, defined once ----------------------------------------------------------------------
-- A call's effective cost is its ledger cost_total plus the deltas of its price corrections (DESIGN §4); its
-- input part likewise. The rollups below hold exactly this, kept by the ledger insert and by reprice in the
-- statements that change it; the roller's close-time audit recomputes an hour from this view and compares.
ALTER TABLE cost_adjustments
    ADD COLUMN end_user text,
    ADD COLUMN workspace text,
    ADD COLUMN api_key_id text,
    -- For a row written before cost_input existed: its old cost leaving the "unsplit" money of the rollup.
    ADD COLUMN delta_unsplit numeric NOT NULL DEFAULT 0;

CREATE VIEW effective_costs AS
SELECT l.call_id, l.billing_hour, l.model, l.project, l.key_fingerprint, l.end_user, l.workspace, l.api_key_id,
       l.priced OR a.call_id IS NOT NULL AS priced,
       CASE WHEN l.cost_total IS NULL AND a.call_id IS NULL THEN NULL
            ELSE coalesce(l.cost_total, 0) + coalesce(a.delta, 0) END AS cost,
       CASE WHEN l.cost_input IS NULL AND a.delta_input IS NULL THEN NULL
            ELSE coalesce(l.cost_input, 0) + coalesce(a.delta_input, 0) END AS cost_input,
       coalesce(a.delta, 0) AS adjustment
FROM usage_ledger l
LEFT JOIN (SELECT call_id, billing_hour, sum(delta) AS delta, sum(delta_input) AS delta_input
           FROM cost_adjustments GROUP BY call_id, billing_hour) a USING (call_id, billing_hour);

-- ---- 3. Rollups -------------------------------------------------------------------------------------------
-- hourly_bill (per hour, model, project, key) is now kept by every ledger insert (sums added) and reprice
-- (deltas added); the roller only folds it into hourly_model_bill and moves states. Two more, for what the bill
-- does not carry: spent per end user (budgets scoped to one), and usage per key ID, workspace and model with
-- the input money apart (reconciliation with the platform's bill, whose lines are input_token / output_token).
CREATE TABLE hourly_end_user_cost (
    billing_hour    timestamptz NOT NULL,
    end_user        text        NOT NULL,
    model           text        NOT NULL,
    project         text,
    key_fingerprint text,
    cost            numeric     NOT NULL,
    UNIQUE NULLS NOT DISTINCT (billing_hour, end_user, model, project, key_fingerprint)
);

CREATE TABLE hourly_key_usage (
    billing_hour     timestamptz NOT NULL,
    api_key_id       text,
    key_fingerprint  text,
    workspace        text,
    model            text        NOT NULL,
    -- Calls with tokens (the others add nothing to the platform's bill).
    calls            bigint      NOT NULL,
    estimated_calls  bigint      NOT NULL,
    input_tokens     bigint      NOT NULL,
    output_tokens    bigint      NOT NULL,
    -- Effective money, and its input part. Rows written before cost_input existed put their money in
    -- `unsplit_cost` with their input token classes, split by the price book when reconciled.
    cost             numeric     NOT NULL,
    cost_input       numeric     NOT NULL,
    unsplit_cost     numeric     NOT NULL,
    unsplit_uncached bigint      NOT NULL,
    unsplit_cached   bigint      NOT NULL,
    unsplit_writes   bigint      NOT NULL,
    UNIQUE NULLS NOT DISTINCT (billing_hour, api_key_id, key_fingerprint, workspace, model)
);

-- The rollups of the calls already in the ledger (the hourly bill has them already: the old roller wrote it).
INSERT INTO hourly_end_user_cost (billing_hour, end_user, model, project, key_fingerprint, cost)
SELECT billing_hour, end_user, model, project, key_fingerprint, coalesce(sum(cost), 0)
FROM effective_costs WHERE end_user IS NOT NULL
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO hourly_key_usage (billing_hour, api_key_id, key_fingerprint, workspace, model, calls, estimated_calls,
    input_tokens, output_tokens, cost, cost_input, unsplit_cost, unsplit_uncached, unsplit_cached, unsplit_writes)
SELECT l.billing_hour, l.api_key_id, l.key_fingerprint, l.workspace, l.model, count(*),
       count(*) FILTER (WHERE l.usage_source = 'estimated'), sum(l.input_tokens), sum(l.output_tokens),
       coalesce(sum(e.cost), 0), coalesce(sum(e.cost_input), 0),
       coalesce(sum(e.cost) FILTER (WHERE e.cost_input IS NULL), 0),
       coalesce(sum(l.input_tokens - l.cached_tokens - l.cache_creation_tokens) FILTER (WHERE e.cost_input IS NULL), 0),
       coalesce(sum(l.cached_tokens) FILTER (WHERE e.cost_input IS NULL), 0),
       coalesce(sum(l.cache_creation_tokens) FILTER (WHERE e.cost_input IS NULL), 0)
FROM usage_ledger l JOIN effective_costs e USING (call_id, billing_hour)
WHERE l.input_tokens > 0 OR l.output_tokens > 0
GROUP BY 1, 2, 3, 4, 5;

-- The close-time audit: when each hour was last checked against the ledger, and what it found.
ALTER TABLE bill_hours
    ADD COLUMN audited_at timestamptz,
    ADD COLUMN audit_ok boolean,
    ADD COLUMN audit_detail text;

-- ---- 4. Budget counters for every budget --------------------------------------------------------------------
-- Every sidecar (both coordination modes) keeps its budgets' definitions in budget_defs; the statement trigger
-- adds each ledger insert's cost to the counters of its windows, and a second one each price correction's
-- delta. A window's counter is seeded once, from the rollups (never the ledger), under the advisory lock that
-- inserts and corrections take shared, so nothing falls between the seed and the triggers.
CREATE FUNCTION budget_seed(p_def text, p_start timestamptz, p_end timestamptz) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN d.end_user IS NULL THEN
        (SELECT coalesce(sum(b.cost_total), 0) FROM hourly_bill b
         WHERE b.billing_hour >= p_start AND b.billing_hour < p_end
           AND (d.model IS NULL OR d.model = b.model) AND (d.project IS NULL OR d.project = b.project)
           AND (d.key_fingerprint IS NULL OR d.key_fingerprint = b.key_fingerprint))
    ELSE
        (SELECT coalesce(sum(u.cost), 0) FROM hourly_end_user_cost u
         WHERE u.billing_hour >= p_start AND u.billing_hour < p_end AND u.end_user = d.end_user
           AND (d.model IS NULL OR d.model = u.model) AND (d.project IS NULL OR d.project = u.project)
           AND (d.key_fingerprint IS NULL OR d.key_fingerprint = u.key_fingerprint))
    END
    FROM budget_defs d WHERE d.def_id = p_def
$$;

-- Creates the counters of these windows that do not exist yet (seeded from the rollups).
CREATE FUNCTION budget_windows(p_defs text[], p_starts timestamptz[], p_ends timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_defs, p_starts) AS w(def_id, window_start)
               WHERE NOT EXISTS (SELECT 1 FROM budget_spent s
                                 WHERE s.def_id = w.def_id AND s.window_start = w.window_start)) THEN
        PERFORM pg_advisory_xact_lock(x'0064736d62756467'::bigint);
        INSERT INTO budget_spent (def_id, window_start, window_end, spent)
        SELECT w.def_id, w.window_start, w.window_end, budget_seed(w.def_id, w.window_start, w.window_end)
        FROM unnest(p_defs, p_starts, p_ends) AS w(def_id, window_start, window_end)
        JOIN budget_defs d USING (def_id)
        ON CONFLICT DO NOTHING;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION budget_admit(p_call uuid, p_defs text[], p_starts timestamptz[], p_ends timestamptz[],
                                        p_limits numeric[], p_amount numeric, p_instance uuid, p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_spent numeric;
    v_reserved numeric;
BEGIN
    -- A reservation is not money (the call's ledger row is): its commit need not wait for the WAL flush. A
    -- Postgres crash can lose the last milliseconds of reservations, never a ledger row.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM budget_windows(p_defs, p_starts, p_ends);
    -- The definitions are distinct and ascending (the caller's job): one counter row each, locked in order.
    FOR i IN 1 .. coalesce(array_length(p_defs, 1), 0) LOOP
        IF p_amount IS NULL THEN
            SELECT spent INTO v_spent FROM budget_spent WHERE def_id = p_defs[i] AND window_start = p_starts[i];
            IF NOT FOUND THEN
                RAISE EXCEPTION 'budget definition % is not in budget_defs', p_defs[i];
            END IF;
            IF v_spent >= p_limits[i] THEN
                RETURN i;
            END IF;
        ELSE
            SELECT spent, reserved INTO v_spent, v_reserved FROM budget_spent
            WHERE def_id = p_defs[i] AND window_start = p_starts[i] FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'budget definition % is not in budget_defs', p_defs[i];
            END IF;
            IF v_spent + v_reserved + p_amount > p_limits[i] THEN
                RETURN i;
            END IF;
        END IF;
    END LOOP;
    IF p_amount IS NOT NULL THEN
        INSERT INTO budget_reservations (call_id, def_id, window_start, amount, instance_id, reserved_at)
        SELECT p_call, w.def_id, w.window_start, p_amount, p_instance, p_now
        FROM unnest(p_defs, p_starts) AS w(def_id, window_start);
        UPDATE budget_spent s SET reserved = s.reserved + p_amount
        FROM unnest(p_defs, p_starts) AS w(def_id, window_start)
        WHERE s.def_id = w.def_id AND s.window_start = w.window_start;
    END IF;
    RETURN 0;
END $$;

CREATE TRIGGER usage_ledger_budget_charge AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION budget_charge();

-- A price correction moves the counters of the windows its call counts in, by its delta.
CREATE FUNCTION budget_adjust() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(x'0064736d62756467'::bigint);
    IF NOT EXISTS (SELECT 1 FROM budget_defs) THEN
        RETURN NULL;
    END IF;
    WITH moves AS (
        SELECT d.def_id, date_trunc(d.period, n.billing_hour, d.timezone) AS window_start, sum(n.delta) AS delta
        FROM new_rows n
        JOIN budget_defs d
          ON (d.model IS NULL OR d.model = n.model) AND (d.project IS NULL OR d.project = n.project)
         AND (d.key_fingerprint IS NULL OR d.key_fingerprint = n.key_fingerprint)
         AND (d.end_user IS NULL OR d.end_user = n.end_user)
        WHERE n.delta <> 0
        GROUP BY 1, 2
    ), locked AS (
        SELECT s.def_id, s.window_start FROM budget_spent s JOIN moves m USING (def_id, window_start)
        ORDER BY s.def_id, s.window_start
        FOR UPDATE OF s
    )
    UPDATE budget_spent s SET spent = s.spent + m.delta
    FROM moves m JOIN locked l USING (def_id, window_start)
    WHERE s.def_id = m.def_id AND s.window_start = m.window_start;
    RETURN NULL;
END $$;

CREATE TRIGGER cost_adjustments_budget_adjust AFTER INSERT ON cost_adjustments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION budget_adjust();

-- Budgets' definitions are now every budget's, alerts included (they read the same counters).

-- ---- 5. Outboxes claimed with a lease ------------------------------------------------------------------------
-- A deliverer claims a due row by setting its lease (one short transaction), sends with no connection or lock
-- held, and records the outcome in a second transaction. A deliverer that dies mid-send leaves a lease that
-- expires: another one (or the same after a restart) delivers the row again, with the same Idempotency-Key.
ALTER TABLE bill_deliveries ADD COLUMN lease_until timestamptz;
ALTER TABLE budget_alerts ADD COLUMN lease_until timestamptz;
