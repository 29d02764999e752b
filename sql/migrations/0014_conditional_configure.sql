-- Version 14: rc_configure can restore a configuration without replacing one.
--
--   * rc_configure takes p_restore (default false). With it, the configuration is stored
--     only into a row that is missing or holds none (made anew by an outcome after rc_forget
--     or rc_gc); a row someone configured is left as it is. Processes restore their
--     configuration when told the row was forgotten, and any role can forge that
--     announcement: processes declaring different configurations (a rolling deploy) would
--     each replace the other's, emptying the window whenever its kind or duration changes,
--     so that repeated forgeries kept the breaker from ever tripping.
--   * p_restore NULL is refused with SQLSTATE 22023 naming it.
--
-- The roles that could execute rc_configure keep that right.

CREATE TEMPORARY TABLE rc_restore_grantees ON COMMIT DROP AS
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

DROP FUNCTION @extschema@.rc_configure(text, text, bigint, bigint, bigint, bigint, bigint, interval, interval,
    interval, bigint, interval, bigint, bigint, double precision, interval);

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
    p_max_cooldown interval DEFAULT NULL,
    p_restore boolean DEFAULT false
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
    _unnegatable text;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    IF p_restore IS NULL THEN
        RAISE EXCEPTION 'rc: p_restore must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A fraction's sign moves to its numerator: the one bigint whose negation overflows is
    -- refused first, by name.
    _unnegatable := CASE -9223372036854775808
        WHEN p_failure_limit_num THEN 'p_failure_limit_num'
        WHEN p_failure_limit_den THEN 'p_failure_limit_den'
        WHEN p_success_limit_num THEN 'p_success_limit_num'
        WHEN p_success_limit_den THEN 'p_success_limit_den'
        WHEN p_slow_call_limit_num THEN 'p_slow_call_limit_num'
        WHEN p_slow_call_limit_den THEN 'p_slow_call_limit_den' END;
    IF _unnegatable IS NOT NULL THEN
        RAISE EXCEPTION 'rc: % must be part of a fraction in (0, 1], got -9223372036854775808',
            _unnegatable
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

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

    -- A restore follows an announcement that the row was forgotten, which any role can forge:
    -- it stores only into a row made anew without a configuration (by an outcome or
    -- rc_set_state; the columns' defaults), never over one someone stored. Processes that
    -- disagree on the configuration would otherwise take turns replacing it at each forgery,
    -- and a change of window kind or duration empties the window, so the breaker never trips.
    IF p_restore
       AND (_row.failure_limit_num, _row.failure_limit_den, _row.window_size,
            _row.success_limit_num, _row.success_limit_den, _row.cooldown, _row.half_open_timeout,
            _row.window_duration, _row.minimum_calls, _row.slow_call_duration,
            _row.slow_call_limit_num, _row.slow_call_limit_den, _row.cooldown_factor,
            _row.max_cooldown)
           IS DISTINCT FROM
           (1, 1, 1, NULL::integer, NULL::integer, interval '0', interval '10 seconds',
            NULL::interval, NULL::integer, NULL::interval, NULL::integer, NULL::integer,
            1::double precision, NULL::interval) THEN
        state := _row.state;
        generation := _row.generation;
        RETURN NEXT;
        RETURN;
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
    interval, bigint, interval, bigint, bigint, double precision, interval, boolean) IS
    'Stores a breaker''s configuration. Limits are fractions in (0, 1]; the window defaults to '
    'the failure limit''s denominator, or is a time window of p_window_duration; '
    'p_minimum_calls outcomes are needed before a trip; calls longer than '
    'p_slow_call_duration are slow; each reopening multiplies the cooldown by '
    'p_cooldown_factor up to p_max_cooldown. Keys never configured use failure limit 1/1, '
    'cooldown 0. With p_restore, the configuration is stored only into a row that is missing '
    'or holds no stored configuration (made anew by an outcome after rc_forget or rc_gc).';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_configure(text, text, bigint, bigint, bigint, bigint, bigint, interval, interval,
    interval, bigint, interval, bigint, bigint, double precision, interval, boolean)
FROM PUBLIC;

DO $$
DECLARE
    _grant record;
BEGIN
    FOR _grant IN
        SELECT p.oid::pg_catalog.regprocedure AS function, g.role_name
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN pg_temp.rc_restore_grantees AS g
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
