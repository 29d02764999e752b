-- Version 8: hardening.
--
--   * rc_namespace_grants follows roles by OID: a renamed role keeps its namespaces and a new
--     role given an old name gets none. Grants of roles that no longer exist are dropped.
--   * rc_check_namespace checks the namespace's length before the grant: an over-long value
--     is a 22023 naming p_namespace, never echoed back.
--   * Retry budgets: p_first_attempts is at most 1000000000 per call and the counters
--     saturate at the bigint maximum, so no caller can make later deposits overflow.

ALTER TABLE @extschema@.rc_namespace_grants ADD COLUMN role_oid oid;
UPDATE @extschema@.rc_namespace_grants AS g SET role_oid = r.oid
FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) g.role_name;
DELETE FROM @extschema@.rc_namespace_grants WHERE role_oid IS NULL;
ALTER TABLE @extschema@.rc_namespace_grants ALTER COLUMN role_oid SET NOT NULL;
ALTER TABLE @extschema@.rc_namespace_grants DROP CONSTRAINT rc_namespace_grants_pkey;
ALTER TABLE @extschema@.rc_namespace_grants
    ADD CONSTRAINT rc_namespace_grants_pkey PRIMARY KEY (role_oid, namespace);
COMMENT ON TABLE @extschema@.rc_namespace_grants IS
    'The namespaces each application role (by OID) may use (''*'': all); written by pg-setup '
    '--app-role ROLE --namespace NS.';

CREATE OR REPLACE FUNCTION @extschema@.rc_check_namespace(p_namespace text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The length first: an over-long value is a bad parameter (22023), never echoed, whoever
    -- may use it. A NULL namespace is left to the caller's name check.
    IF char_length(p_namespace) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got % characters',
            char_length(p_namespace)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Called only from the SECURITY DEFINER functions, where current_user is their owner.
    IF p_namespace IS NULL OR pg_has_role(session_user, current_user, 'MEMBER')
       OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
                  WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r
                                      WHERE r.rolname = session_user)
                    AND g.namespace IN (p_namespace, '*')) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'rc: role % may not use namespace %', quote_ident(session_user),
        quote_nullable(p_namespace)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'pg-setup grants an application role its namespaces.';
END;
$$;

CREATE OR REPLACE VIEW @extschema@.rc_circuit_breaker_status WITH (security_barrier) AS
SELECT
    b.resource_key,
    b.namespace,
    b.state,
    b.generation,
    translate(array_to_string(b.execution_log, ''), 'tf', 'SF') AS execution_log,
    b.failure_count,
    b.open_until,
    CASE WHEN b.state = 'OPEN' AND NOT b.held THEN greatest(b.open_until - now(), interval '0')
    END
        AS cooldown_remaining,
    (SELECT count(*) FROM unnest(b.permits) AS p(expiry) WHERE p.expiry > now())::integer
        AS permits,
    b.successes,
    b.failures,
    b.failure_limit_num || '/' || b.failure_limit_den AS failure_limit,
    b.window_size,
    b.success_limit_num || '/' || b.success_limit_den AS success_limit,
    coalesce(b.success_limit_den, b.window_size) AS half_open_window,
    b.cooldown,
    b.half_open_timeout,
    b.created_at,
    b.updated_at,
    b.held,
    b.window_duration,
    coalesce(b.minimum_calls, CASE WHEN b.window_duration IS NULL THEN b.window_size ELSE 10 END)
        AS minimum_calls,
    b.slow_call_duration,
    b.slow_call_limit_num || '/' || b.slow_call_limit_den AS slow_call_limit,
    b.cooldown_factor,
    b.max_cooldown,
    b.last_cooldown,
    CASE WHEN cardinality(b.bucket_calls) > 0
         THEN (SELECT sum(n)::integer FROM unnest(b.bucket_calls) AS c(n))
         ELSE cardinality(b.execution_log) END AS window_calls,
    CASE WHEN cardinality(b.bucket_calls) > 0
         THEN (SELECT sum(n)::integer FROM unnest(b.bucket_failures) AS f(n))
         ELSE cardinality(array_positions(b.execution_log, false)) END AS window_failures,
    CASE WHEN cardinality(b.bucket_calls) > 0
         THEN (SELECT sum(n)::integer FROM unnest(b.bucket_slow) AS s(n))
         ELSE cardinality(array_positions(b.slow_log, true)) END AS window_slow
FROM @extschema@.rc_circuit_breakers AS b
-- Each application role sees its own namespaces only (the owner sees all).
WHERE (SELECT @extschema@.rc_session_is_owner())
   OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
              WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = session_user)
                AND g.namespace IN (b.namespace, '*'));

CREATE OR REPLACE FUNCTION @extschema@.rc_gc(p_idle interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _deleted bigint;
BEGIN
    IF p_idle IS NULL OR extract(year FROM p_idle) <> 0 OR extract(month FROM p_idle) <> 0
       OR p_idle < interval '0' OR p_idle > interval '3650 days' THEN
        RAISE EXCEPTION 'rc: p_idle must be between 0 and 3650 days, in days, hours, minutes or '
            'seconds (no months or years), got %', coalesce(p_idle::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Only CLOSED breakers: an OPEN or HALF_OPEN one still protects something. Rows are
    -- skipped rather than waited for when a call holds their lock: they are not idle.
    WITH doomed AS (
        SELECT b.resource_key, b.namespace
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.state = 'CLOSED' AND b.updated_at < clock_timestamp() - p_idle
          AND ((SELECT @extschema@.rc_session_is_owner())
               OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
                          WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r
                                              WHERE r.rolname = session_user)
                            AND g.namespace IN (b.namespace, '*')))
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM @extschema@.rc_circuit_breakers AS b
    USING doomed AS d
    WHERE b.resource_key = d.resource_key AND b.namespace = d.namespace;
    GET DIAGNOSTICS _deleted = ROW_COUNT;
    RETURN _deleted;
END;
$$;

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
    -- Bounded per call, and the counters below saturate: no value a caller passes can make
    -- a later deposit overflow (which would cut every process off the shared budget).
    IF p_first_attempts IS NULL OR p_first_attempts < 0 OR p_first_attempts > 1000000000 THEN
        RAISE EXCEPTION 'rc: p_first_attempts must be in [0, 1000000000], got %',
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
        first_attempts = b.first_attempts
            + least(p_first_attempts, 9223372036854775807 - b.first_attempts),
        retries = b.retries + least(v_permitted::integer, 9223372036854775807 - b.retries),
        refusals = b.refusals
            + least((p_withdraw AND NOT v_permitted)::integer, 9223372036854775807 - b.refusals),
        updated_at = greatest(v_then, v_now)
    WHERE b.name = p_name AND b.namespace = p_namespace;

    permitted := v_permitted;
    balance := v_balance;
    RETURN NEXT;
END;
$$;
