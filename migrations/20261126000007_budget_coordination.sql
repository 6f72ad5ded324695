-- Budgets coordinated through Postgres (`--budget-coordination postgres`, DESIGN §8; src/budget/coordinated.rs).
--
-- A `block` budget's room is decided here, in one call of budget_admit() per call, so that every sidecar on
-- the database admits against the same numbers:
--   spent    = budget_spent: the ledger's total in the window, kept by the trigger below in the same
--              transaction as each ledger insert (initialised once per window from the ledger itself);
--   reserved = the worst case of every admitted call whose row has not reached the ledger yet (in flight, or
--              journaled and not shipped, by any sidecar): one row each in budget_reservations, their sum kept
--              on the counter row. The ledger insert of a call deletes its reservations and takes them off
--              `reserved` in the same transaction that adds its cost to `spent`, so a call is counted once, at
--              its worst case or at its actual cost, never both and never neither.
-- Admissions of one budget window serialise on its budget_spent row (FOR UPDATE): two sidecars cannot both
-- take the last room.

-- Budget definitions, by what decides which calls they count (not by name or limit: each sidecar checks
-- its own limit). def_id = the first 16 hex digits of SHA-256 over period, zone and scope.
CREATE TABLE budget_defs (
    def_id          text PRIMARY KEY,
    name            text NOT NULL,
    period          text NOT NULL CHECK (period IN ('hour', 'day', 'month')),
    timezone        text NOT NULL,
    model           text,
    project         text,
    key_fingerprint text,
    end_user        text
);

CREATE TABLE budget_spent (
    def_id       text        NOT NULL REFERENCES budget_defs,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    spent        numeric     NOT NULL,
    -- The sum of the window's rows in budget_reservations (an admission reads it instead of summing them).
    reserved     numeric     NOT NULL DEFAULT 0,
    PRIMARY KEY (def_id, window_start)
);

CREATE TABLE budget_reservations (
    call_id      uuid        NOT NULL,
    def_id       text        NOT NULL,
    window_start timestamptz NOT NULL,
    amount       numeric     NOT NULL,
    -- The sidecar that reserved (meter_instances): a reservation of a sidecar gone for good is released.
    instance_id  uuid        NOT NULL,
    reserved_at  timestamptz NOT NULL,
    PRIMARY KEY (call_id, def_id)
);
CREATE INDEX budget_reservations_window ON budget_reservations (def_id, window_start);

-- Ledger inserts take this advisory lock shared; a window's first admission takes it exclusive while it sums
-- the ledger, so no insert can fall between that sum and the trigger's additions. ("dsmbudg" in ASCII.)
CREATE FUNCTION budget_charge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(x'0064736d62756467'::bigint);
    IF NOT EXISTS (SELECT 1 FROM budget_defs) THEN
        RETURN NULL;
    END IF;
    WITH released AS (
        DELETE FROM budget_reservations r USING new_rows n WHERE r.call_id = n.call_id
        RETURNING r.def_id, r.window_start, r.amount
    ), charges AS (
        SELECT d.def_id, date_trunc(d.period, n.billing_hour, d.timezone) AS window_start, n.cost_total AS cost
        FROM new_rows n
        JOIN budget_defs d
          ON (d.model IS NULL OR d.model = n.model) AND (d.project IS NULL OR d.project = n.project)
         AND (d.key_fingerprint IS NULL OR d.key_fingerprint = n.key_fingerprint)
         AND (d.end_user IS NULL OR d.end_user = n.end_user)
        WHERE n.cost_total IS NOT NULL AND n.cost_total <> 0
    ), moves AS (
        SELECT def_id, window_start, sum(cost) AS cost, sum(freed) AS freed
        FROM (SELECT def_id, window_start, cost, 0 AS freed FROM charges
              UNION ALL
              SELECT def_id, window_start, 0, amount FROM released) m
        GROUP BY 1, 2
    ), locked AS (
        -- Row locks in one order (admissions take them in the same), so two writers cannot deadlock.
        SELECT s.def_id, s.window_start FROM budget_spent s JOIN moves m USING (def_id, window_start)
        ORDER BY s.def_id, s.window_start
        FOR UPDATE OF s
    )
    UPDATE budget_spent s SET spent = s.spent + m.cost, reserved = s.reserved - m.freed
    FROM moves m JOIN locked l USING (def_id, window_start)
    WHERE s.def_id = m.def_id AND s.window_start = m.window_start;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_ledger_budget_charge AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION budget_charge();

-- One admission: the budgets (def ids ascending, with their windows and this sidecar's limits) and the
-- call's worst case (NULL: `--budget-reservation none`, admit while spent < limit and reserve nothing).
-- Returns 0 when admitted (the reservations made), else the 1-based position of the first budget without room.
CREATE FUNCTION budget_admit(p_call uuid, p_defs text[], p_starts timestamptz[], p_ends timestamptz[],
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
    IF EXISTS (SELECT 1 FROM unnest(p_defs, p_starts) AS w(def_id, window_start)
               WHERE NOT EXISTS (SELECT 1 FROM budget_spent s
                                 WHERE s.def_id = w.def_id AND s.window_start = w.window_start)) THEN
        PERFORM pg_advisory_xact_lock(x'0064736d62756467'::bigint);
        INSERT INTO budget_spent (def_id, window_start, window_end, spent)
        SELECT d.def_id, w.window_start, w.window_end,
               (SELECT coalesce(sum(l.cost_total), 0) FROM usage_ledger l
                WHERE l.billing_hour >= w.window_start AND l.billing_hour < w.window_end
                  AND (d.model IS NULL OR d.model = l.model) AND (d.project IS NULL OR d.project = l.project)
                  AND (d.key_fingerprint IS NULL OR d.key_fingerprint = l.key_fingerprint)
                  AND (d.end_user IS NULL OR d.end_user = l.end_user))
        FROM unnest(p_defs, p_starts, p_ends) AS w(def_id, window_start, window_end)
        JOIN budget_defs d USING (def_id)
        ON CONFLICT DO NOTHING;
    END IF;
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
