-- Version 17: rc_set_state stores a finite open_until and a failure count that cannot overflow.
--
--   * rc_set_state capped open_until at a year ahead but took '-infinity' as it came: every
--     rc_try_acquire and rc_record of that breaker, and the status view, then failed with
--     "cannot subtract infinite timestamps". '-infinity' now counts as now (the cooldown is
--     over, as for any time past), and rows already holding an infinite one are given the
--     current time.
--   * rc_set_state took any p_failure_count >= 0: at integer's maximum, every failure
--     recorded afterwards failed with "integer out of range" (a HALF_OPEN trial's permit
--     then held until its timeout). It is now refused above 1000000000, naming p_failure_count.

CREATE OR REPLACE FUNCTION @extschema@.rc_set_state(
    p_key text,
    p_state text,
    p_failure_count integer,
    p_open_until timestamptz,
    p_execution_log boolean[],
    p_namespace text DEFAULT 'default'
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    _target text := upper(btrim(p_state));
    _log boolean[] := coalesce(p_execution_log, '{}');
    _size integer;
    _len integer;
    _now timestamptz;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    IF _target IS NULL OR _target NOT IN ('CLOSED', 'OPEN', 'HALF_OPEN', 'DISABLED') THEN
        RAISE EXCEPTION 'rc: p_state must be one of CLOSED, OPEN, HALF_OPEN, DISABLED, got %',
            quote_nullable(left(p_state, 40))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Bounded well below integer's maximum: each failure adds one, and an overflow would
    -- make every failure recorded afterwards an error.
    IF (p_failure_count BETWEEN 0 AND 1000000000) IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_failure_count must be between 0 and 1000000000, got %',
            coalesce(p_failure_count::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_ndims(_log) > 1 OR array_position(_log, NULL) IS NOT NULL
       OR cardinality(_log) > 10000 THEN
        RAISE EXCEPTION 'rc: p_execution_log must hold at most 10000 true/false outcomes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO @extschema@.rc_circuit_breakers (resource_key, namespace)
    VALUES (p_key, p_namespace)
    ON CONFLICT DO NOTHING;
    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    _now := clock_timestamp();

    -- The window keeps the newest outcomes that fit the new phase.
    _size := CASE WHEN _target = 'HALF_OPEN' THEN coalesce(_row.success_limit_den, _row.window_size)
                  ELSE _row.window_size END;
    _len := cardinality(_log);
    IF _len > _size THEN
        _log := _log[_len - _size + 1 : _len];
    END IF;
    UPDATE @extschema@.rc_circuit_breakers AS b
    SET state = _target,
        generation = _row.generation + 1,
        failure_count = p_failure_count,
        -- Finite: -infinity (now) would make every reader's open_until - now() fail.
        open_until = CASE WHEN _target = 'OPEN'
                          THEN least(CASE WHEN p_open_until = '-infinity' THEN _now
                                          ELSE coalesce(p_open_until, _now) END,
                                     _now + interval '365 days') END,
        execution_log = _log,
        permits = '{}',
        slow_log = '{}',
        held = _target = 'DISABLED',
        last_cooldown = interval '0',
        window_start = NULL,
        bucket_head = 0,
        bucket_calls = '{}',
        bucket_failures = '{}',
        bucket_slow = '{}',
        updated_at = _now
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    RETURNING b.open_until INTO _row.open_until;
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _row.state, _target,
                                 _row.generation + 1, _row.open_until);
    state := _target;
    generation := _row.generation + 1;
    RETURN NEXT;
END;
$$;

UPDATE @extschema@.rc_circuit_breakers
SET open_until = clock_timestamp()
WHERE NOT isfinite(open_until);
