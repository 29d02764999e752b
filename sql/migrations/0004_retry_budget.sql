-- Version 4: the fleet-wide retry budget (rc_retry_budgets and its functions), new objects
-- only. The same section ends schema.sql, byte for byte (tests/test_retry_budget_sql.py).

-- ==== retry budget: a token bucket per (namespace, name), shared by the whole fleet ======
--
-- Each first attempt deposits `ratio` tokens, each retry withdraws one; on top of that the
-- bucket refills by itself up to `min_per_second` tokens at `min_per_second` per second (the
-- floor), and every token decays with a 10-second time constant, so a long healthy period
-- cannot bank a retry storm. Retries across the fleet thus stay within ratio x first
-- attempts + min_per_second x (seconds + 1). Clients batch their deposits and pass the
-- configuration with each call (the last one wins, as with breakers).
--
-- Like every other function, these pin search_path to pg_catalog, pg_temp and name our own
-- objects @extschema@.name (the installer fills in the schema), and a role may only use the
-- namespaces pg-setup granted it.

CREATE TABLE @extschema@.rc_retry_budgets (
    name            varchar(255)     NOT NULL,
    namespace       varchar(255)     NOT NULL DEFAULT 'default',
    balance         double precision NOT NULL,
    min_per_second  double precision NOT NULL,
    first_attempts  bigint           NOT NULL DEFAULT 0,
    retries         bigint           NOT NULL DEFAULT 0,
    refusals        bigint           NOT NULL DEFAULT 0,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT rc_retry_budgets_pkey PRIMARY KEY (name, namespace)
);

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_settle_at(
    p_name text,
    p_namespace text,
    p_first_attempts bigint,
    p_ratio double precision,
    p_min_per_second double precision,
    p_withdraw boolean,
    p_now timestamptz
)
RETURNS TABLE (permitted boolean, balance double precision)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_balance double precision;
    v_then timestamptz;
    v_elapsed double precision;
    v_permitted boolean;
BEGIN
    IF p_name IS NULL OR char_length(p_name) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_name must be 1 to 255 characters long, got %',
            coalesce(char_length(p_name) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_namespace IS NULL OR char_length(p_namespace) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got %',
            coalesce(char_length(p_namespace) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_first_attempts IS NULL OR p_first_attempts < 0 THEN
        RAISE EXCEPTION 'rc: p_first_attempts must be >= 0, got %',
            coalesce(p_first_attempts::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- NaN sorts above every number in PostgreSQL, so the upper bounds refuse it too.
    IF p_ratio IS NULL OR NOT (p_ratio >= 0 AND p_ratio <= 1000) THEN
        RAISE EXCEPTION 'rc: p_ratio must be in [0, 1000], got %', coalesce(p_ratio::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_min_per_second IS NULL OR NOT (p_min_per_second >= 0 AND p_min_per_second <= 1000000)
    THEN
        RAISE EXCEPTION 'rc: p_min_per_second must be in [0, 1000000], got %',
            coalesce(p_min_per_second::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_withdraw IS NULL THEN
        RAISE EXCEPTION 'rc: p_withdraw must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);

    -- A new budget starts with one second of floor, so a process's first retries are not
    -- refused just because no deposit has been flushed yet.
    INSERT INTO @extschema@.rc_retry_budgets AS b
        (name, namespace, balance, min_per_second, created_at, updated_at)
    VALUES (p_name, p_namespace, p_min_per_second, p_min_per_second, v_now, v_now)
    ON CONFLICT (name, namespace) DO NOTHING;
    SELECT b.balance, b.updated_at INTO v_balance, v_then
    FROM @extschema@.rc_retry_budgets AS b
    WHERE b.name = p_name AND b.namespace = p_namespace
    FOR UPDATE;

    -- Clocks of different callers (and explicit p_now) may go backwards: no time passed.
    v_elapsed := greatest(0, extract(epoch FROM v_now - v_then)::double precision);
    IF v_elapsed > 0 THEN
        -- exp() raises on underflow: after 10 minutes nothing is left anyway.
        v_balance := CASE WHEN v_elapsed >= 600 THEN 0
                          ELSE v_balance * exp(-v_elapsed / 10) END;
        IF v_balance < p_min_per_second THEN
            v_balance := least(p_min_per_second, v_balance + p_min_per_second * v_elapsed);
        END IF;
    END IF;
    v_balance := v_balance + p_first_attempts * p_ratio;
    -- Tolerates the rounding of adding up fractional deposits (5 x 0.2 is a whole token).
    v_permitted := p_withdraw AND v_balance >= 1 - 1e-9;
    IF v_permitted THEN
        v_balance := greatest(0, v_balance - 1);
    END IF;

    UPDATE @extschema@.rc_retry_budgets AS b
    SET balance = v_balance,
        min_per_second = p_min_per_second,
        first_attempts = b.first_attempts + p_first_attempts,
        retries = b.retries + v_permitted::integer,
        refusals = b.refusals + (p_withdraw AND NOT v_permitted)::integer,
        updated_at = greatest(v_then, v_now)
    WHERE b.name = p_name AND b.namespace = p_namespace;

    permitted := v_permitted;
    balance := v_balance;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_deposit(
    p_name text,
    p_namespace text DEFAULT 'default',
    p_first_attempts bigint DEFAULT 1,
    p_ratio double precision DEFAULT 0.2,
    p_min_per_second double precision DEFAULT 10
)
RETURNS double precision
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.balance FROM @extschema@.rc_budget_settle_at(
        p_name, p_namespace, p_first_attempts, p_ratio, p_min_per_second, false, NULL) AS s;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_withdraw(
    p_name text,
    p_namespace text DEFAULT 'default',
    p_min_per_second double precision DEFAULT 10,
    p_first_attempts bigint DEFAULT 0,
    p_ratio double precision DEFAULT 0.2
)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.permitted FROM @extschema@.rc_budget_settle_at(
        p_name, p_namespace, p_first_attempts, p_ratio, p_min_per_second, true, NULL) AS s;
$$;

COMMENT ON TABLE @extschema@.rc_retry_budgets IS
    'Fleet-wide retry budgets: a token bucket per (namespace, name), changed only by the '
    'budget deposit and withdraw functions.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.balance IS
    'Tokens left when updated_at was written; one token pays for one retry.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.min_per_second IS
    'The floor: the bucket refills by itself up to this many tokens, at this many per second.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.first_attempts IS
    'First attempts ever deposited.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.retries IS
    'Withdrawals granted (retries made).';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.refusals IS
    'Withdrawals refused (retries not made).';
COMMENT ON FUNCTION @extschema@.rc_budget_settle_at(
    text, text, bigint, double precision, double precision, boolean, timestamptz) IS
    'Deposits p_first_attempts x p_ratio tokens and, with p_withdraw, takes one for a retry, '
    'at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_budget_deposit(
    text, text, bigint, double precision, double precision) IS
    'Deposits p_first_attempts x p_ratio tokens (a batch of first attempts); returns the balance.';
COMMENT ON FUNCTION @extschema@.rc_budget_withdraw(
    text, text, double precision, bigint, double precision) IS
    'May a retry happen now? Takes one token if so; can carry a batch of deposits along.';

-- Nothing is executable by default; `pg-setup --app-role` grants the public functions.
REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_budget_settle_at(text, text, bigint, double precision, double precision,
                                    boolean, timestamptz),
    @extschema@.rc_budget_deposit(text, text, bigint, double precision, double precision),
    @extschema@.rc_budget_withdraw(text, text, double precision, bigint, double precision)
FROM PUBLIC;
-- ==== end of retry budget ================================================================
