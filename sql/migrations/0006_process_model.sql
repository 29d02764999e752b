-- Version 6: the process model's SQL.
--
--   * rc_force and rc_reset of a breaker that does not exist raise no_data_found (P0002)
--     instead of creating it: a typo no longer creates a breaker. rc_configure (or any call)
--     creates one.
--   * rc_set_state is 0.4.5's set_state as a function: a transition like any other (a new
--     generation, announced with NOTIFY), within the namespaces the role was granted, so
--     an application role can use it without privileges on the table.

CREATE OR REPLACE FUNCTION @extschema@.rc_force_at(
    p_key text,
    p_state text,
    p_namespace text,
    p_now timestamptz,
    p_hold boolean DEFAULT false
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    _target text := upper(btrim(p_state));
    _from text;
    _now timestamptz;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    IF _target IS NULL OR _target NOT IN ('CLOSED', 'OPEN', 'HALF_OPEN', 'DISABLED') THEN
        RAISE EXCEPTION 'rc: p_state must be one of CLOSED, OPEN, HALF_OPEN, DISABLED, got %',
            quote_nullable(left(p_state, 40))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_hold IS NULL OR (p_hold AND _target NOT IN ('OPEN', 'DISABLED')) THEN
        RAISE EXCEPTION 'rc: p_hold must be true or false, and true only with OPEN or DISABLED, '
            'got % with %', coalesce(p_hold::text, 'NULL'), _target
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        -- Changing a breaker nobody created is most likely a typo: say so, create nothing.
        RAISE EXCEPTION 'rc: no breaker % in namespace %', quote_literal(p_key),
            quote_literal(p_namespace)
            USING ERRCODE = 'no_data_found',
                  HINT = 'rc_force and rc_reset change an existing breaker; rc_configure '
                         '(or any call) creates one.';
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- Every force is a transition, even to the current state, so calls admitted before it
    -- no longer count. A forced OPEN cools down for the configured cooldown (the growth
    -- starts again from it), or is held until the next force or reset.
    _from := _row.state;
    IF _target = 'OPEN' THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET state = 'OPEN',
            generation = _row.generation + 1,
            open_until = CASE WHEN p_hold THEN NULL ELSE _now + _row.cooldown END,
            permits = '{}',
            held = p_hold,
            last_cooldown = CASE WHEN p_hold THEN interval '0' ELSE _row.cooldown END,
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        RETURNING b.state, b.generation, b.open_until
        INTO _row.state, _row.generation, _row.open_until;
    ELSE
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET state = _target,
            generation = _row.generation + 1,
            execution_log = '{}',
            slow_log = '{}',
            failure_count = 0,
            open_until = NULL,
            permits = '{}',
            held = _target = 'DISABLED',
            last_cooldown = interval '0',
            window_start = NULL,
            bucket_head = 0,
            bucket_calls = '{}',
            bucket_failures = '{}',
            bucket_slow = '{}',
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        RETURNING b.state, b.generation, b.open_until
        INTO _row.state, _row.generation, _row.open_until;
    END IF;
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _from, _target,
                                 _row.generation, _row.open_until);
    state := _target;
    generation := _row.generation;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_reset_at(p_key text, p_namespace text, p_now timestamptz)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    _now timestamptz;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;

    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        -- Changing a breaker nobody created is most likely a typo: say so, create nothing.
        RAISE EXCEPTION 'rc: no breaker % in namespace %', quote_literal(p_key),
            quote_literal(p_namespace)
            USING ERRCODE = 'no_data_found',
                  HINT = 'rc_force and rc_reset change an existing breaker; rc_configure '
                         '(or any call) creates one.';
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- A fresh CLOSED breaker, counters zeroed and any hold released; the configuration stays.
    UPDATE @extschema@.rc_circuit_breakers AS b
    SET state = 'CLOSED',
        generation = _row.generation + 1,
        execution_log = '{}',
        slow_log = '{}',
        failure_count = 0,
        open_until = NULL,
        permits = '{}',
        successes = 0,
        failures = 0,
        held = false,
        last_cooldown = interval '0',
        window_start = NULL,
        bucket_head = 0,
        bucket_calls = '{}',
        bucket_failures = '{}',
        bucket_slow = '{}',
        updated_at = _now
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _row.state, 'CLOSED',
                                 _row.generation + 1, NULL);
    state := 'CLOSED';
    generation := _row.generation + 1;
    RETURN NEXT;
END;
$$;

-- 0.4.5's set_state: overwrite a breaker's state outright (an operator's repair), creating
-- the breaker if needed. A transition like any other: a new generation, announced.
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
    IF (p_failure_count >= 0) IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_failure_count must be >= 0, got %',
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
        open_until = CASE WHEN _target = 'OPEN'
                          THEN least(coalesce(p_open_until, _now), _now + interval '365 days') END,
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

COMMENT ON FUNCTION @extschema@.rc_force(text, text, text, boolean) IS
    'Forces a transition: OPEN for one cooldown (held OPEN with p_hold), DISABLED (every '
    'call permitted, nothing trips, until the next force or reset), or a fresh CLOSED or '
    'HALF_OPEN phase. A breaker that does not exist raises no_data_found (P0002).';
COMMENT ON FUNCTION @extschema@.rc_reset(text, text) IS
    'Back to a fresh CLOSED breaker with zeroed counters; the configuration stays. A breaker '
    'that does not exist raises no_data_found (P0002).';
COMMENT ON FUNCTION @extschema@.rc_set_state(text, text, integer, timestamptz, boolean[], text) IS
    'Overwrites a breaker''s state (0.4.5''s set_state), creating it if needed: a new '
    'generation, announced like any transition. open_until counts only for OPEN.';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_set_state(text, text, integer, timestamptz, boolean[], text)
FROM PUBLIC;

-- Roles that may force a breaker may set its state too (pg-setup --app-role grants both).
-- The schema is found through the table's row type, never spelled in a literal.
DO $grant$
DECLARE
    _schema oid := (SELECT t.typnamespace FROM pg_catalog.pg_type AS t
                    WHERE t.oid = pg_catalog.pg_typeof(NULL::@extschema@.rc_circuit_breakers));
    _set_state pg_catalog.regprocedure;
    _role name;
BEGIN
    SELECT p.oid INTO _set_state
    FROM pg_catalog.pg_proc AS p
    WHERE p.proname = 'rc_set_state' AND p.pronamespace = _schema;
    FOR _role IN
        SELECT DISTINCT r.rolname
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
        JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
        WHERE p.proname = 'rc_force' AND p.pronamespace = _schema
          AND a.privilege_type = 'EXECUTE'
          AND a.grantee <> p.proowner
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', _set_state, _role);
    END LOOP;
END;
$grant$;
