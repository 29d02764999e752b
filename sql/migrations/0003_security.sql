-- Version 3: security and bounded rows.
--
--   * Every function pins `search_path = pg_catalog, pg_temp` and names our own objects with
--     their schema (@extschema@, replaced by the installer), so no SECURITY DEFINER function
--     can be made to run an operator or function another role planted in a writable schema.
--   * rc_namespace_grants says which namespaces each application role may use; the functions
--     and the status view enforce it for the session's login role. Roles that could already
--     execute the functions keep every namespace ('*'), so an upgrade cuts no one off;
--     `pg-setup --app-role ROLE --namespace NS` narrows them.
--   * Durations are bounded (at most 365 days, no months or years); rows holding more are cut
--     to the bound, and so are the OPEN holds and trial permits they produced.
--   * rc_forget deletes one breaker, rc_gc the CLOSED ones idle for a given time.
-- Every function is redefined (each pins the new search_path); only the new objects' comments
-- and privileges are set, the others' survive CREATE OR REPLACE.

CREATE TABLE @extschema@.rc_namespace_grants (
    role_name  name          NOT NULL,
    namespace  varchar(255)  NOT NULL,
    granted_at timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT rc_namespace_grants_pkey PRIMARY KEY (role_name, namespace),
    CONSTRAINT rc_namespace_grants_namespace_check
        CHECK (char_length(namespace) BETWEEN 1 AND 255)
);

-- The row type's namespace is this schema: found without spelling its name in a literal.
INSERT INTO @extschema@.rc_namespace_grants (role_name, namespace)
SELECT DISTINCT r.rolname, '*'
FROM pg_catalog.pg_proc AS p
CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
WHERE p.proname = 'rc_try_acquire'
  AND p.pronamespace = (SELECT t.typnamespace FROM pg_catalog.pg_type AS t
                        WHERE t.oid = pg_catalog.pg_typeof(NULL::@extschema@.rc_circuit_breakers))
  AND a.privilege_type = 'EXECUTE'
  AND a.grantee <> p.proowner;

UPDATE @extschema@.rc_circuit_breakers
SET cooldown = CASE WHEN extract(epoch FROM cooldown) >= 31536000 THEN interval '365 days'
                    ELSE make_interval(secs => extract(epoch FROM cooldown)) END
WHERE NOT (cooldown <= interval '365 days'
           AND extract(year FROM cooldown) = 0 AND extract(month FROM cooldown) = 0);

UPDATE @extschema@.rc_circuit_breakers
SET half_open_timeout =
        CASE WHEN extract(epoch FROM half_open_timeout) >= 31536000 THEN interval '365 days'
             ELSE make_interval(secs => extract(epoch FROM half_open_timeout)) END
WHERE NOT (half_open_timeout <= interval '365 days'
           AND extract(year FROM half_open_timeout) = 0
           AND extract(month FROM half_open_timeout) = 0);

UPDATE @extschema@.rc_circuit_breakers
SET open_until = least(open_until, now() + interval '365 days'),
    permits = ARRAY(SELECT least(u.expiry, now() + interval '365 days')
                    FROM unnest(permits) WITH ORDINALITY AS u(expiry, ord) ORDER BY u.ord)
WHERE open_until > now() + interval '365 days'
   OR EXISTS (SELECT 1 FROM unnest(permits) AS u(expiry)
              WHERE u.expiry > now() + interval '365 days');

ALTER TABLE @extschema@.rc_circuit_breakers
    DROP CONSTRAINT rc_circuit_breakers_cooldown_check,
    DROP CONSTRAINT rc_circuit_breakers_half_open_timeout_check,
    ADD CONSTRAINT rc_circuit_breakers_cooldown_check
        CHECK (cooldown >= interval '0' AND cooldown <= interval '365 days'
               AND extract(year FROM cooldown) = 0 AND extract(month FROM cooldown) = 0),
    ADD CONSTRAINT rc_circuit_breakers_half_open_timeout_check
        CHECK (half_open_timeout > interval '0' AND half_open_timeout <= interval '365 days'
               AND extract(year FROM half_open_timeout) = 0
               AND extract(month FROM half_open_timeout) = 0);

-- True when the session's login role administers every namespace: it owns the breaker objects,
-- is a member of their owner, or is a superuser. session_user, because inside a SECURITY
-- DEFINER function current_user is always the owner.
CREATE OR REPLACE FUNCTION @extschema@.rc_session_is_owner()
RETURNS boolean
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(session_user, current_user, 'MEMBER')
$$;

-- Raises insufficient_privilege unless the session's login role may use p_namespace.
CREATE OR REPLACE FUNCTION @extschema@.rc_check_namespace(p_namespace text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Called only from the SECURITY DEFINER functions, where current_user is their owner.
    -- A NULL namespace is left to the caller's name check, which reports it as invalid.
    IF p_namespace IS NULL OR pg_has_role(session_user, current_user, 'MEMBER')
       OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
                  WHERE g.role_name = session_user AND g.namespace IN (p_namespace, '*')) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'rc: role % may not use namespace %', quote_ident(session_user),
        quote_nullable(p_namespace)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'pg-setup grants an application role its namespaces.';
END;
$$;

-- Durations are bounded so that no later call can overflow a timestamp, and month-bearing
-- intervals are refused because a month has no fixed length (the Python side uses seconds).
CREATE OR REPLACE FUNCTION @extschema@.rc_check_duration(
    p_name text,
    p_value interval,
    p_zero_allowed boolean
)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_value IS NULL OR extract(year FROM p_value) <> 0 OR extract(month FROM p_value) <> 0
       OR p_value > interval '365 days'
       OR (p_zero_allowed AND p_value < interval '0')
       OR (NOT p_zero_allowed AND p_value <= interval '0') THEN
        RAISE EXCEPTION 'rc: % must be % and at most 365 days, in days, hours, minutes or '
            'seconds (no months or years), got %', p_name,
            CASE WHEN p_zero_allowed THEN '>= 0' ELSE '> 0' END,
            coalesce(p_value::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- A security barrier, so that no condition a caller adds can see rows of other namespaces.
CREATE OR REPLACE VIEW @extschema@.rc_circuit_breaker_status WITH (security_barrier) AS
SELECT
    b.resource_key,
    b.namespace,
    b.state,
    b.generation,
    translate(array_to_string(b.execution_log, ''), 'tf', 'SF') AS execution_log,
    b.failure_count,
    b.open_until,
    CASE WHEN b.state = 'OPEN' THEN greatest(b.open_until - now(), interval '0') END
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
    b.updated_at
FROM @extschema@.rc_circuit_breakers AS b
-- Each application role sees its own namespaces only (the owner sees all).
WHERE (SELECT @extschema@.rc_session_is_owner())
   OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
              WHERE g.role_name = session_user AND g.namespace IN (b.namespace, '*'));

-- Raises the error for a bad key or namespace. Callers test the cheap condition inline and
-- call this only when it fails, so a valid call pays no extra function call.
CREATE OR REPLACE FUNCTION @extschema@.rc_check_names(p_key text, p_namespace text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_key IS NULL OR char_length(p_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_key must be 1 to 255 characters long, got %',
            coalesce(char_length(p_key) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_namespace IS NULL OR char_length(p_namespace) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got %',
            coalesce(char_length(p_namespace) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_notify_transition(
    p_key text,
    p_namespace text,
    p_from text,
    p_to text,
    p_generation bigint,
    p_open_until timestamptz
)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Delivered at commit, so listeners never hear of a transition that was rolled back.
    PERFORM pg_notify('resilient_circuit', json_build_object(
        'namespace', p_namespace,
        'key', p_key,
        'from', p_from,
        'to', p_to,
        'generation', p_generation,
        'open_until', p_open_until
    )::text);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_try_acquire_at(p_key text, p_namespace text, p_now timestamptz)
RETURNS TABLE (permitted boolean, state text, generation bigint, retry_after interval)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    _now timestamptz;
    _live timestamptz[];
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;

    -- Fast path, no lock and no write: a CLOSED breaker admits and an OPEN one still cooling
    -- down rejects, whatever concurrent calls do. This is nearly every call.
    SELECT b.state, b.generation, b.open_until
    INTO _row.state, _row.generation, _row.open_until
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    IF NOT FOUND THEN
        -- A breaker never used is CLOSED; admitting changes nothing, so no row is created.
        RETURN QUERY SELECT true, 'CLOSED'::text, 0::bigint, NULL::interval;
        RETURN;
    END IF;
    _now := coalesce(p_now, clock_timestamp());
    IF _row.state = 'CLOSED' THEN
        RETURN QUERY SELECT true, 'CLOSED'::text, _row.generation, NULL::interval;
        RETURN;
    ELSIF _row.state = 'OPEN' AND _now < _row.open_until THEN
        RETURN QUERY SELECT false, 'OPEN'::text, _row.generation, _row.open_until - _now;
        RETURN;
    END IF;

    -- The call may change the row: lock it and decide on what it holds once locked.
    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT true, 'CLOSED'::text, 0::bigint, NULL::interval;
        RETURN;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    IF _row.state = 'CLOSED' THEN
        RETURN QUERY SELECT true, 'CLOSED'::text, _row.generation, NULL::interval;
        RETURN;
    END IF;

    IF _row.state = 'OPEN' THEN
        IF _now < _row.open_until THEN
            RETURN QUERY SELECT false, 'OPEN'::text, _row.generation, _row.open_until - _now;
            RETURN;
        END IF;
        -- Cooldown over (or never set): this call is the first trial of a fresh half-open phase.
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET state = 'HALF_OPEN',
            generation = _row.generation + 1,
            execution_log = '{}',
            open_until = NULL,
            permits = ARRAY[_now + _row.half_open_timeout],
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, 'OPEN', 'HALF_OPEN',
                                     _row.generation + 1, NULL);
        RETURN QUERY SELECT true, 'HALF_OPEN'::text, _row.generation + 1, NULL::interval;
        RETURN;
    END IF;

    -- HALF_OPEN: permits not recorded within half_open_timeout are released, then a trial is
    -- admitted only while trials in flight stay below the outcomes the phase still needs.
    _live := ARRAY(
        SELECT u.expiry FROM unnest(_row.permits) WITH ORDINALITY AS u(expiry, ord)
        WHERE u.expiry > _now ORDER BY u.ord
    );
    IF cardinality(_live) < coalesce(_row.success_limit_den, _row.window_size)
                            - cardinality(_row.execution_log) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET permits = _live || (_now + _row.half_open_timeout),
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        RETURN QUERY SELECT true, 'HALF_OPEN'::text, _row.generation, NULL::interval;
        RETURN;
    END IF;
    IF cardinality(_live) < cardinality(_row.permits) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET permits = _live,
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    END IF;
    -- Retry when the first outstanding trial times out. With none outstanding (only after a
    -- reconfiguration shrank the half-open window) no time is known: ask again at once.
    RETURN QUERY SELECT false, 'HALF_OPEN'::text, _row.generation,
        coalesce((SELECT min(u.expiry) FROM unnest(_live) AS u(expiry)) - _now, interval '0');
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_record_many_at(
    p_key text,
    p_namespace text,
    p_successes boolean[],
    p_generations bigint[],
    p_now timestamptz
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    _now timestamptz;
    _count integer := coalesce(cardinality(p_successes), 0);
    _first integer := array_lower(p_successes, 1);
    _gen_first integer := array_lower(p_generations, 1);
    _success boolean;
    _generation bigint;
    -- The current phase's window as a ring, so that an outcome costs O(1) whatever the
    -- window's size: _ring[_head] is the oldest of its _len outcomes, _failed counts its
    -- failures. It is loaded from execution_log at the phase's first counted outcome and
    -- written back only then, so a window no outcome reached stays exactly as it was.
    _ring boolean[];
    _loaded boolean := false;
    _head integer;
    _size integer;
    _len integer;
    _failed integer;
    _released integer;
    _from text;
    _to text;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    IF p_successes IS NULL OR array_ndims(p_successes) > 1
       OR array_position(p_successes, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'rc: p_successes must be a one-dimensional array of true/false, got %',
            coalesce(p_successes::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_generations IS NOT NULL
       AND (array_ndims(p_generations) > 1 OR cardinality(p_generations) <> _count) THEN
        RAISE EXCEPTION 'rc: p_generations must be NULL or hold one generation (or NULL) per '
            'outcome in p_successes, got % for % outcomes', cardinality(p_generations), _count
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF _count = 0 THEN
        SELECT b.state, b.generation INTO state, generation
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        IF NOT FOUND THEN
            state := 'CLOSED';
            generation := 0;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @extschema@.rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- Lifetime counters count every outcome, even one that cannot move the breaker. The
    -- same pass counts the outcomes of the current generation (or none), for the fast path.
    SELECT _row.successes + count(*) FILTER (WHERE u.ok),
           _row.failures + count(*) FILTER (WHERE NOT u.ok),
           count(*) FILTER (WHERE u.gen IS NULL OR u.gen = _row.generation),
           count(*) FILTER (WHERE NOT u.ok AND (u.gen IS NULL OR u.gen = _row.generation))
    INTO _row.successes, _row.failures, _len, _failed
    FROM unnest(p_successes, p_generations) AS u(ok, gen);

    -- A healthy breaker's batch holds no failure: it cannot trip, so the window is simply
    -- its newest outcomes followed by that many successes, and no loop is needed.
    IF _row.state = 'CLOSED' AND _failed = 0 AND _len > 0 THEN
        _size := _row.window_size;
        _len := least(_len, _size);
        _row.execution_log := _row.execution_log[
                                  cardinality(_row.execution_log) - (_size - _len) + 1 :]
                              || array_fill(true, ARRAY[_len]);
        _row.failure_count := 0;
        _count := 0;
    END IF;

    FOR _i IN 0 .. _count - 1 LOOP
        -- An OPEN breaker waits for its cooldown, and an outcome of a call admitted in an
        -- earlier generation says nothing about the current phase.
        EXIT WHEN _row.state = 'OPEN';
        _generation := p_generations[_gen_first + _i];
        CONTINUE WHEN _generation IS NOT NULL AND _generation <> _row.generation;
        _success := p_successes[_first + _i];

        IF NOT _loaded THEN
            _size := CASE WHEN _row.state = 'CLOSED' THEN _row.window_size
                          ELSE coalesce(_row.success_limit_den, _row.window_size) END;
            _len := least(cardinality(_row.execution_log), _size);
            _ring := _row.execution_log[cardinality(_row.execution_log) - _len + 1 :]
                     || array_fill(NULL::boolean, ARRAY[_size - _len]);
            _head := 1;
            _failed := cardinality(array_positions(_ring, false));
            _released := 0;
            _loaded := true;
        END IF;
        IF _row.state = 'HALF_OPEN' THEN
            -- The outcome returns one trial permit: the oldest still live.
            _released := _released + 1;
        END IF;
        IF _len < _size THEN
            _ring[_head + _len] := _success;
            _len := _len + 1;
        ELSE
            IF NOT _ring[_head] THEN
                _failed := _failed - 1;
            END IF;
            _ring[_head] := _success;
            _head := _head % _size + 1;
        END IF;
        IF NOT _success THEN
            _failed := _failed + 1;
        END IF;
        _row.failure_count := CASE WHEN _success THEN 0 ELSE _row.failure_count + 1 END;

        -- Products in bigint: a limit's terms go up to 2^31 and the window to 10000.
        IF _row.state = 'CLOSED' THEN
            IF NOT _success AND _len = _size
               AND _failed::bigint * _row.failure_limit_den
                   >= _row.failure_limit_num::bigint * _size THEN
                _to := 'OPEN';
            END IF;
        ELSIF _len >= _size THEN
            IF _row.success_limit_den IS NOT NULL THEN
                _to := CASE WHEN (_len - _failed)::bigint * _row.success_limit_den
                                 >= _row.success_limit_num::bigint * _size
                            THEN 'CLOSED' ELSE 'OPEN' END;
            ELSE
                _to := CASE WHEN _failed::bigint * _row.failure_limit_den
                                 >= _row.failure_limit_num::bigint * _size
                            THEN 'OPEN' ELSE 'CLOSED' END;
            END IF;
        END IF;

        IF _to IS NOT NULL THEN
            _from := _row.state;
            _row.state := _to;
            _row.generation := _row.generation + 1;
            _row.permits := '{}';
            IF _to = 'OPEN' THEN
                -- The window is kept: it shows what tripped the breaker.
                _row.execution_log := _ring[_head : _size] || _ring[1 : _head - 1];
                _row.open_until := _now + _row.cooldown;
            ELSE
                _row.execution_log := '{}';
                _row.open_until := NULL;
            END IF;
            _loaded := false;
            PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _from, _to,
                                         _row.generation, _row.open_until);
            _to := NULL;
        END IF;
    END LOOP;

    IF _loaded THEN
        -- While the ring is not full its oldest outcome is still at index 1.
        _row.execution_log := CASE WHEN _len < _size THEN _ring[1 : _len]
                                   ELSE _ring[_head : _size] || _ring[1 : _head - 1] END;
        IF _released > 0 THEN
            _row.permits := (ARRAY(
                SELECT u.expiry FROM unnest(_row.permits) WITH ORDINALITY AS u(expiry, ord)
                WHERE u.expiry > _now ORDER BY u.ord
            ))[_released + 1 :];
        END IF;
    END IF;

    UPDATE @extschema@.rc_circuit_breakers AS b
    SET state = _row.state,
        generation = _row.generation,
        execution_log = _row.execution_log,
        failure_count = _row.failure_count,
        open_until = _row.open_until,
        permits = _row.permits,
        successes = _row.successes,
        failures = _row.failures,
        updated_at = _now
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;

    state := _row.state;
    generation := _row.generation;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_record_at(
    p_key text,
    p_success boolean,
    p_namespace text,
    p_generation bigint,
    p_now timestamptz
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'rc: p_success must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, ARRAY[p_success],
                                    ARRAY[p_generation], p_now);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_force_at(
    p_key text,
    p_state text,
    p_namespace text,
    p_now timestamptz
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
    IF _target IS NULL OR _target NOT IN ('CLOSED', 'OPEN', 'HALF_OPEN') THEN
        RAISE EXCEPTION 'rc: p_state must be one of CLOSED, OPEN, HALF_OPEN, got %',
            quote_nullable(p_state)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @extschema@.rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- Every force is a transition, even to the current state, so calls admitted before it
    -- no longer count.
    _from := _row.state;
    IF _target = 'OPEN' THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET state = 'OPEN',
            generation = _row.generation + 1,
            open_until = _now + _row.cooldown,
            permits = '{}',
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        RETURNING b.state, b.generation, b.open_until
        INTO _row.state, _row.generation, _row.open_until;
    ELSE
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET state = _target,
            generation = _row.generation + 1,
            execution_log = '{}',
            failure_count = 0,
            open_until = NULL,
            permits = '{}',
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
        INSERT INTO @extschema@.rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- A fresh CLOSED breaker, counters zeroed; the configuration stays.
    UPDATE @extschema@.rc_circuit_breakers AS b
    SET state = 'CLOSED',
        generation = _row.generation + 1,
        execution_log = '{}',
        failure_count = 0,
        open_until = NULL,
        permits = '{}',
        successes = 0,
        failures = 0,
        updated_at = _now
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _row.state, 'CLOSED',
                                 _row.generation + 1, NULL);
    state := 'CLOSED';
    generation := _row.generation + 1;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_configure(
    p_key text,
    p_namespace text DEFAULT 'default',
    p_failure_limit_num integer DEFAULT 1,
    p_failure_limit_den integer DEFAULT 1,
    p_window_size integer DEFAULT NULL,
    p_success_limit_num integer DEFAULT NULL,
    p_success_limit_den integer DEFAULT NULL,
    p_cooldown interval DEFAULT '0',
    p_half_open_timeout interval DEFAULT '10 seconds'
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    -- bigint so that flipping the sign of -2^31 cannot overflow.
    _fnum bigint := p_failure_limit_num;
    _fden bigint := p_failure_limit_den;
    _snum bigint := p_success_limit_num;
    _sden bigint := p_success_limit_den;
    _gcd bigint;
    _window integer;
    _size integer;
    _len integer;
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

    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @extschema@.rc_circuit_breakers AS b (
            resource_key, namespace, failure_limit_num, failure_limit_den, window_size,
            success_limit_num, success_limit_den, cooldown, half_open_timeout
        )
        VALUES (p_key, p_namespace, _fnum, _fden, _window, _snum, _sden,
                p_cooldown, p_half_open_timeout)
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

    -- Nothing is evaluated: the window is only cut to the current phase's new size.
    _size := CASE WHEN _row.state = 'HALF_OPEN' THEN coalesce(_sden, _window) ELSE _window END;
    _len := cardinality(_row.execution_log);

    -- Every process of an application configures its breakers when it starts: when nothing
    -- changes, leave the row alone rather than write the same values again.
    IF _len > _size
       OR (_row.failure_limit_num, _row.failure_limit_den, _row.window_size,
           _row.success_limit_num, _row.success_limit_den, _row.cooldown, _row.half_open_timeout)
          IS DISTINCT FROM
          (_fnum::integer, _fden::integer, _window, _snum::integer, _sden::integer,
           p_cooldown, p_half_open_timeout) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET failure_limit_num = _fnum,
            failure_limit_den = _fden,
            window_size = _window,
            success_limit_num = _snum,
            success_limit_den = _sden,
            cooldown = p_cooldown,
            half_open_timeout = p_half_open_timeout,
            execution_log = CASE WHEN _len > _size
                                 THEN _row.execution_log[_len - _size + 1 : _len]
                                 ELSE _row.execution_log END,
            updated_at = clock_timestamp()
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    END IF;
    state := _row.state;
    generation := _row.generation;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_try_acquire(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (permitted boolean, state text, generation bigint, retry_after interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY SELECT * FROM @extschema@.rc_try_acquire_at(p_key, p_namespace, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_record(
    p_key text,
    p_success boolean,
    p_namespace text DEFAULT 'default',
    p_generation bigint DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'rc: p_success must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, ARRAY[p_success],
                                    ARRAY[p_generation], NULL);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_record_many(
    p_key text,
    p_namespace text,
    p_successes boolean[],
    p_generations bigint[] DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, p_successes, p_generations, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_force(p_key text, p_state text, p_namespace text DEFAULT 'default')
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY SELECT * FROM @extschema@.rc_force_at(p_key, p_state, p_namespace, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_reset(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY SELECT * FROM @extschema@.rc_reset_at(p_key, p_namespace, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_status(p_key text, p_namespace text DEFAULT 'default')
RETURNS SETOF @extschema@.rc_circuit_breaker_status
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY
    SELECT * FROM @extschema@.rc_circuit_breaker_status AS s
    WHERE s.resource_key = p_key AND s.namespace = p_namespace;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_forget(p_key text, p_namespace text DEFAULT 'default')
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _state text;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    DELETE FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    RETURNING b.state INTO _state;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Processes that cached this breaker must drop what they hold: it starts over as a fresh
    -- CLOSED breaker with the default configuration.
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _state, 'CLOSED', 0, NULL);
    RETURN true;
END;
$$;

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
                          WHERE g.role_name = session_user
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

COMMENT ON VIEW @extschema@.rc_circuit_breaker_status IS
    'Every breaker of the namespaces the session''s login role may use, in readable form: '
    'execution_log as S/F (oldest first), time left in the cooldown, live trial permits, '
    'limits as fractions.';
COMMENT ON FUNCTION @extschema@.rc_forget(text, text) IS
    'Deletes one breaker (true if it existed); its next use starts a fresh default one.';
COMMENT ON FUNCTION @extschema@.rc_gc(interval) IS
    'Deletes the CLOSED breakers of the caller''s namespaces not changed for p_idle; returns '
    'how many.';
COMMENT ON FUNCTION @extschema@.rc_session_is_owner() IS
    'True when the session''s login role owns the breaker objects (or is a member of their '
    'owner, or a superuser) and so may use every namespace.';
COMMENT ON FUNCTION @extschema@.rc_check_namespace(text) IS
    'Raises insufficient_privilege unless the session''s login role may use the namespace.';
COMMENT ON FUNCTION @extschema@.rc_check_duration(text, interval, boolean) IS
    'Raises invalid_parameter_value for a duration that is NULL, negative (or zero when not '
    'allowed), over 365 days, or holds months or years.';
COMMENT ON TABLE @extschema@.rc_namespace_grants IS
    'The namespaces each application role may use (''*'': all); written by pg-setup '
    '--app-role ROLE --namespace NS.';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_forget(text, text),
    @extschema@.rc_gc(interval),
    @extschema@.rc_session_is_owner(),
    @extschema@.rc_check_namespace(text),
    @extschema@.rc_check_duration(text, interval, boolean)
FROM PUBLIC;
