-- Version 8: hardening.
--
--   * rc_namespace_grants follows roles by OID: a renamed role keeps its namespaces and a new
--     role given an old name gets none. Grants of roles that no longer exist are dropped.
--   * rc_check_namespace checks the namespace's length before the grant: an over-long value
--     is a 22023 naming p_namespace, never echoed back.
--   * Retry budgets: p_first_attempts is at most 1000000000 per call and the counters
--     saturate at the bigint maximum, so no caller can make later deposits overflow.
--   * rc_configure takes bigint whole numbers and refuses what does not fit int4 (22023).

ALTER TABLE @extschema@.rc_namespace_grants ADD COLUMN role_oid oid;
UPDATE @extschema@.rc_namespace_grants AS g SET role_oid = r.oid
FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) g.role_name;
DELETE FROM @extschema@.rc_namespace_grants WHERE role_oid IS NULL;
ALTER TABLE @extschema@.rc_namespace_grants ALTER COLUMN role_oid SET NOT NULL;
ALTER TABLE @extschema@.rc_namespace_grants DROP CONSTRAINT rc_namespace_grants_pkey;
ALTER TABLE @extschema@.rc_namespace_grants
    ADD CONSTRAINT rc_namespace_grants_pkey PRIMARY KEY (role_oid, namespace);
COMMENT ON TABLE @extschema@.rc_namespace_grants IS
    'The namespaces each application role (by OID) may use (''*'': all); written by '
    'pg-setup for its application role and namespace options.';

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

-- rc_configure takes its whole numbers as bigint, so that a caller passing a number wider
-- than int4 gets a 22023 naming the parameter instead of "function does not exist". The
-- roles that could execute it keep that right.
CREATE TEMPORARY TABLE rc_hardening_grantees ON COMMIT DROP AS
SELECT DISTINCT r.rolname AS role_name
FROM pg_catalog.pg_proc AS p
CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) a.grantee
-- The row type's namespace is this schema: found without spelling its name in a literal.
WHERE p.proname OPERATOR(pg_catalog.=) 'rc_configure'
  AND p.pronamespace OPERATOR(pg_catalog.=) (
      SELECT t.typnamespace FROM pg_catalog.pg_type AS t
      WHERE t.oid OPERATOR(pg_catalog.=)
            pg_catalog.pg_typeof(NULL::@extschema@.rc_circuit_breakers))
  AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
  AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

DROP FUNCTION @extschema@.rc_configure(text, text, integer, integer, integer, integer, integer,
    interval, interval, interval, integer, interval, integer, integer, double precision, interval);

CREATE OR REPLACE FUNCTION @extschema@.rc_configure(
    p_key text,
    p_namespace text DEFAULT 'default',
    p_failure_limit_num bigint DEFAULT 1,
    p_failure_limit_den bigint DEFAULT 1,
    p_window_size bigint DEFAULT NULL,
    p_success_limit_num bigint DEFAULT NULL,
    p_success_limit_den bigint DEFAULT NULL,
    p_cooldown interval DEFAULT '0',
    p_half_open_timeout interval DEFAULT '10 seconds',
    p_window_duration interval DEFAULT NULL,
    p_minimum_calls bigint DEFAULT NULL,
    p_slow_call_duration interval DEFAULT NULL,
    p_slow_call_limit_num bigint DEFAULT NULL,
    p_slow_call_limit_den bigint DEFAULT NULL,
    p_cooldown_factor double precision DEFAULT 1,
    p_max_cooldown interval DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    -- The parameters are bigint so that a caller passing a wider number gets a 22023 naming
    -- it rather than "function does not exist"; what is stored must fit int4.
    _fnum bigint := p_failure_limit_num;
    _fden bigint := p_failure_limit_den;
    _snum bigint := p_success_limit_num;
    _sden bigint := p_success_limit_den;
    _lnum bigint := p_slow_call_limit_num;
    _lden bigint := p_slow_call_limit_den;
    _gcd bigint;
    _window bigint;
    _size integer;
    _len integer;
    _fresh boolean;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);

    -- Limits are fractions in (0, 1], stored reduced: 5/10 is 1/2, a window of 2.
    IF _fden < 0 THEN
        _fnum := -_fnum;
        _fden := -_fden;
    END IF;
    IF (_fnum > 0 AND _fnum <= _fden) IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_failure_limit_num/p_failure_limit_den must be in (0, 1], got %/%',
            coalesce(p_failure_limit_num::text, 'NULL'), coalesce(p_failure_limit_den::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    _gcd := gcd(_fnum, _fden);
    _fnum := _fnum / _gcd;
    _fden := _fden / _gcd;
    IF _fden > 2147483647 THEN
        RAISE EXCEPTION 'rc: p_failure_limit_num/p_failure_limit_den must have a reduced '
            'denominator of at most 2147483647, got %/%', _fnum, _fden
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF (_snum IS NULL) <> (_sden IS NULL) THEN
        RAISE EXCEPTION 'rc: p_success_limit_num and p_success_limit_den must both be set or '
            'both be NULL, got %/%',
            coalesce(p_success_limit_num::text, 'NULL'), coalesce(p_success_limit_den::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF _sden IS NOT NULL THEN
        IF _sden < 0 THEN
            _snum := -_snum;
            _sden := -_sden;
        END IF;
        IF (_snum > 0 AND _snum <= _sden) IS NOT TRUE THEN
            RAISE EXCEPTION 'rc: p_success_limit_num/p_success_limit_den must be in (0, 1], '
                'got %/%', p_success_limit_num, p_success_limit_den
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        _gcd := gcd(_snum, _sden);
        _snum := _snum / _gcd;
        _sden := _sden / _gcd;
        IF _sden > 10000 THEN
            RAISE EXCEPTION 'rc: p_success_limit_num/p_success_limit_den is the half-open window '
                'and its reduced denominator must be <= 10000, got %/%', _snum, _sden
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    IF p_window_size IS NULL AND _fden > 10000 THEN
        RAISE EXCEPTION 'rc: p_window_size defaults to the reduced denominator of '
            'p_failure_limit_num/p_failure_limit_den, which must then be <= 10000, got %/%',
            _fnum, _fden
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    _window := coalesce(p_window_size, _fden);
    IF _window NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'rc: p_window_size must be between 1 and 10000, got %', _window
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    PERFORM @extschema@.rc_check_duration('p_cooldown', p_cooldown, true);
    PERFORM @extschema@.rc_check_duration('p_half_open_timeout', p_half_open_timeout, false);

    -- A time window is ten buckets: it must last at least ten microseconds.
    IF p_window_duration IS NOT NULL THEN
        PERFORM @extschema@.rc_check_duration('p_window_duration', p_window_duration, false);
        IF p_window_duration < interval '10 microseconds' THEN
            RAISE EXCEPTION 'rc: p_window_duration must be at least 10 microseconds, got %',
                p_window_duration
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF p_minimum_calls < 1 OR p_minimum_calls > 2147483647
       OR (p_window_duration IS NULL AND p_minimum_calls > _window) THEN
        RAISE EXCEPTION 'rc: p_minimum_calls must be between 1 and 2147483647 and, with a count '
            'window, at most p_window_size (%), got %', _window, p_minimum_calls
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Slow calls: a duration, and a limit in (0, 1] that defaults to 1/1.
    IF p_slow_call_duration IS NULL THEN
        IF _lnum IS NOT NULL OR _lden IS NOT NULL THEN
            RAISE EXCEPTION 'rc: p_slow_call_limit_num/p_slow_call_limit_den need '
                'p_slow_call_duration'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSE
        PERFORM @extschema@.rc_check_duration('p_slow_call_duration', p_slow_call_duration,
                                              false);
        IF (_lnum IS NULL) <> (_lden IS NULL) THEN
            RAISE EXCEPTION 'rc: p_slow_call_limit_num and p_slow_call_limit_den must both be '
                'set or both be NULL, got %/%', coalesce(p_slow_call_limit_num::text, 'NULL'),
                coalesce(p_slow_call_limit_den::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        _lnum := coalesce(_lnum, 1);
        _lden := coalesce(_lden, 1);
        IF _lden < 0 THEN
            _lnum := -_lnum;
            _lden := -_lden;
        END IF;
        IF (_lnum > 0 AND _lnum <= _lden) IS NOT TRUE THEN
            RAISE EXCEPTION 'rc: p_slow_call_limit_num/p_slow_call_limit_den must be in (0, 1], '
                'got %/%', p_slow_call_limit_num, p_slow_call_limit_den
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        _gcd := gcd(_lnum, _lden);
        _lnum := _lnum / _gcd;
        _lden := _lden / _gcd;
        IF _lden > 2147483647 THEN
            RAISE EXCEPTION 'rc: p_slow_call_limit_num/p_slow_call_limit_den must have a '
                'reduced denominator of at most 2147483647, got %/%', _lnum, _lden
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    IF (p_cooldown_factor BETWEEN 1 AND 100) IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_cooldown_factor must be between 1 and 100, got %',
            coalesce(p_cooldown_factor::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max_cooldown IS NOT NULL THEN
        PERFORM @extschema@.rc_check_duration('p_max_cooldown', p_max_cooldown, true);
        IF p_max_cooldown < p_cooldown THEN
            RAISE EXCEPTION 'rc: p_max_cooldown must be >= p_cooldown, got % < %',
                p_max_cooldown, p_cooldown
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @extschema@.rc_circuit_breakers AS b (
            resource_key, namespace, failure_limit_num, failure_limit_den, window_size,
            success_limit_num, success_limit_den, cooldown, half_open_timeout, window_duration,
            minimum_calls, slow_call_duration, slow_call_limit_num, slow_call_limit_den,
            cooldown_factor, max_cooldown
        )
        VALUES (p_key, p_namespace, _fnum, _fden, _window, _snum, _sden,
                p_cooldown, p_half_open_timeout, p_window_duration, p_minimum_calls,
                p_slow_call_duration, _lnum, _lden, p_cooldown_factor, p_max_cooldown)
        ON CONFLICT DO NOTHING
        RETURNING b.state, b.generation INTO state, generation;
        IF FOUND THEN
            RETURN NEXT;
            RETURN;
        END IF;
        SELECT * INTO _row
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;

    -- Nothing is evaluated: the window is only cut to the current phase's new size, or, for a
    -- CLOSED window that changes kind (count or time) or duration, started afresh: its outcomes
    -- cannot be placed in the new one.
    _fresh := _row.state = 'CLOSED'
              AND cardinality(_row.execution_log) + cardinality(_row.bucket_calls) > 0
              AND (_row.window_duration IS DISTINCT FROM p_window_duration
                   OR (cardinality(_row.bucket_calls) > 0) <> (p_window_duration IS NOT NULL));
    _size := CASE WHEN _row.state = 'HALF_OPEN' THEN coalesce(_sden, _window) ELSE _window END;
    _len := CASE WHEN cardinality(_row.bucket_calls) > 0 THEN 0
                 ELSE cardinality(_row.execution_log) END;

    -- Every process of an application configures its breakers when it starts: when nothing
    -- changes, leave the row alone rather than write the same values again.
    IF _len > _size OR _fresh
       OR (_row.failure_limit_num, _row.failure_limit_den, _row.window_size,
           _row.success_limit_num, _row.success_limit_den, _row.cooldown, _row.half_open_timeout,
           _row.minimum_calls, _row.slow_call_duration, _row.slow_call_limit_num,
           _row.slow_call_limit_den, _row.cooldown_factor, _row.max_cooldown)
          IS DISTINCT FROM
          (_fnum::integer, _fden::integer, _window, _snum::integer, _sden::integer,
           p_cooldown, p_half_open_timeout, p_minimum_calls, p_slow_call_duration,
           _lnum::integer, _lden::integer, p_cooldown_factor, p_max_cooldown) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET failure_limit_num = _fnum,
            failure_limit_den = _fden,
            window_size = _window,
            success_limit_num = _snum,
            success_limit_den = _sden,
            cooldown = p_cooldown,
            half_open_timeout = p_half_open_timeout,
            window_duration = p_window_duration,
            minimum_calls = p_minimum_calls,
            slow_call_duration = p_slow_call_duration,
            slow_call_limit_num = _lnum,
            slow_call_limit_den = _lden,
            cooldown_factor = p_cooldown_factor,
            max_cooldown = p_max_cooldown,
            execution_log = CASE WHEN _fresh THEN '{}'
                                 WHEN _len > _size
                                 THEN _row.execution_log[_len - _size + 1 : _len]
                                 ELSE _row.execution_log END,
            slow_log = CASE WHEN _fresh THEN '{}'
                            WHEN _len > _size THEN _row.slow_log[_len - _size + 1 : _len]
                            ELSE _row.slow_log END,
            window_start = CASE WHEN _fresh THEN NULL ELSE _row.window_start END,
            bucket_head = CASE WHEN _fresh THEN 0 ELSE _row.bucket_head END,
            bucket_calls = CASE WHEN _fresh THEN '{}' ELSE _row.bucket_calls END,
            bucket_failures = CASE WHEN _fresh THEN '{}' ELSE _row.bucket_failures END,
            bucket_slow = CASE WHEN _fresh THEN '{}' ELSE _row.bucket_slow END,
            updated_at = clock_timestamp()
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    END IF;
    state := _row.state;
    generation := _row.generation;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_configure(text, text, bigint, bigint, bigint, bigint, bigint, interval, interval,
    interval, bigint, interval, bigint, bigint, double precision, interval) IS
    'Stores a breaker''s configuration. Limits are fractions in (0, 1]; the window defaults to '
    'the failure limit''s denominator, or is a time window of p_window_duration; '
    'p_minimum_calls outcomes are needed before a trip; calls longer than '
    'p_slow_call_duration are slow; each reopening multiplies the cooldown by '
    'p_cooldown_factor up to p_max_cooldown. Keys never configured use failure limit 1/1, '
    'cooldown 0.';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_configure(text, text, bigint, bigint, bigint, bigint, bigint, interval, interval,
    interval, bigint, interval, bigint, bigint, double precision, interval)
FROM PUBLIC;

DO $$
DECLARE
    _grant record;
BEGIN
    FOR _grant IN
        SELECT p.oid::pg_catalog.regprocedure AS function, g.role_name
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN pg_temp.rc_hardening_grantees AS g
        WHERE p.proname OPERATOR(pg_catalog.=) 'rc_configure'
          AND p.pronamespace OPERATOR(pg_catalog.=) (
              SELECT t.typnamespace FROM pg_catalog.pg_type AS t
              WHERE t.oid OPERATOR(pg_catalog.=)
                    pg_catalog.pg_typeof(NULL::@extschema@.rc_circuit_breakers))
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', _grant.function,
                                  _grant.role_name);
    END LOOP;
END;
$$;
