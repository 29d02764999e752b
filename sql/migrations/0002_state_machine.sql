-- Version 2: the breaker's state machine moves into PostgreSQL.
--
-- Upgrades the table resilient_circuit 0.4.5 created (version 1) in place, keeping every
-- row and its state, to exactly what schema.sql creates:
--   * execution_log becomes boolean[] (true = success, oldest first), converted from
--     0.4.5's JSON array of booleans. CLOSED and OPEN rows keep their whole log until
--     rc_configure, a CLOSED row's next outcome or an OPEN row's half-open phase cuts it to
--     the window; a HALF_OPEN row starts its trial phase afresh, because 0.4.5 kept no
--     separate half-open window;
--   * new columns: the generation, trial permits, lifetime counters and the breaker's
--     configuration, which takes 0.4.5's defaults (failure limit 1/1 over a window of 1,
--     cooldown 0, half-open timeout 10 s) until a policy or rc_configure sets its own;
--   * the updated_at trigger goes: the functions set updated_at themselves;
--   * the functions, the status view, comments and privileges are created.
-- Everything from the "shared definitions" line to the end is identical in schema.sql.

DROP TRIGGER IF EXISTS rc_circuit_breakers_updated_at ON rc_circuit_breakers;
DROP FUNCTION IF EXISTS rc_update_updated_at();

-- ALTER COLUMN ... USING cannot hold a subquery, so the conversion is a function; it lives
-- in pg_temp and is dropped below, leaving nothing behind in the target schema. Elements
-- that are not JSON booleans (never written by 0.4.5) are skipped rather than failing the
-- upgrade.
CREATE FUNCTION pg_temp.rc_execution_log_from_jsonb(p_log jsonb)
RETURNS boolean[]
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT coalesce(array_agg(e.value::boolean ORDER BY e.ord), '{}')
    FROM jsonb_array_elements(
        CASE WHEN jsonb_typeof(p_log) = 'array' THEN p_log ELSE '[]' END
    ) WITH ORDINALITY AS e(value, ord)
    WHERE jsonb_typeof(e.value) = 'boolean'
$$;

ALTER TABLE rc_circuit_breakers
    ALTER COLUMN state SET DEFAULT 'CLOSED',
    ALTER COLUMN execution_log DROP DEFAULT,
    ALTER COLUMN execution_log TYPE boolean[]
        USING pg_temp.rc_execution_log_from_jsonb(execution_log),
    ALTER COLUMN execution_log SET DEFAULT '{}',
    ALTER COLUMN execution_log SET NOT NULL,
    ADD COLUMN generation        bigint        NOT NULL DEFAULT 0,
    ADD COLUMN permits           timestamptz[] NOT NULL DEFAULT '{}',
    ADD COLUMN successes         bigint        NOT NULL DEFAULT 0,
    ADD COLUMN failures          bigint        NOT NULL DEFAULT 0,
    ADD COLUMN failure_limit_num integer       NOT NULL DEFAULT 1,
    ADD COLUMN failure_limit_den integer       NOT NULL DEFAULT 1,
    ADD COLUMN window_size       integer       NOT NULL DEFAULT 1,
    ADD COLUMN success_limit_num integer,
    ADD COLUMN success_limit_den integer,
    ADD COLUMN cooldown          interval      NOT NULL DEFAULT '0',
    ADD COLUMN half_open_timeout interval      NOT NULL DEFAULT '10 seconds',
    -- 0.4.5 named its state check rc_circuit_breakers_state_check already; the rest are new.
    ADD CONSTRAINT rc_circuit_breakers_counters_check
        CHECK (failure_count >= 0 AND generation >= 0 AND successes >= 0 AND failures >= 0),
    ADD CONSTRAINT rc_circuit_breakers_permits_check
        CHECK (state = 'HALF_OPEN' OR cardinality(permits) = 0),
    ADD CONSTRAINT rc_circuit_breakers_failure_limit_check
        CHECK (failure_limit_num > 0 AND failure_limit_num <= failure_limit_den
               AND gcd(failure_limit_num, failure_limit_den) = 1),
    ADD CONSTRAINT rc_circuit_breakers_window_size_check
        CHECK (window_size BETWEEN 1 AND 10000),
    ADD CONSTRAINT rc_circuit_breakers_success_limit_check
        CHECK ((success_limit_num IS NULL AND success_limit_den IS NULL)
               OR (success_limit_num IS NOT NULL AND success_limit_den IS NOT NULL
                   AND success_limit_num > 0 AND success_limit_num <= success_limit_den
                   AND success_limit_den <= 10000
                   AND gcd(success_limit_num, success_limit_den) = 1)),
    ADD CONSTRAINT rc_circuit_breakers_cooldown_check
        CHECK (cooldown >= interval '0'),
    ADD CONSTRAINT rc_circuit_breakers_half_open_timeout_check
        CHECK (half_open_timeout > interval '0');

DROP FUNCTION pg_temp.rc_execution_log_from_jsonb(jsonb);

-- A half-open phase needs fewer outcomes in its window than its size (1 by default) to
-- admit a trial; 0.4.5's log holds the outcomes from before it opened.
UPDATE rc_circuit_breakers SET execution_log = '{}' WHERE state = 'HALF_OPEN';

-- ==== shared definitions: byte-identical in schema.sql and the newest migration with this line

CREATE OR REPLACE VIEW rc_circuit_breaker_status AS
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
FROM rc_circuit_breakers AS b;

-- Raises the error for a bad key or namespace. Callers test the cheap condition inline and
-- call this only when it fails, so a valid call pays no extra function call.
CREATE OR REPLACE FUNCTION rc_check_names(p_key text, p_namespace text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
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

CREATE OR REPLACE FUNCTION rc_notify_transition(
    p_key text,
    p_namespace text,
    p_from text,
    p_to text,
    p_generation bigint,
    p_open_until timestamptz
)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
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

CREATE OR REPLACE FUNCTION rc_try_acquire_at(p_key text, p_namespace text, p_now timestamptz)
RETURNS TABLE (permitted boolean, state text, generation bigint, retry_after interval)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    _row rc_circuit_breakers%ROWTYPE;
    _now timestamptz;
    _live timestamptz[];
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM rc_check_names(p_key, p_namespace);
    END IF;

    -- Fast path, no lock and no write: a CLOSED breaker admits and an OPEN one still cooling
    -- down rejects, whatever concurrent calls do. This is nearly every call.
    SELECT b.state, b.generation, b.open_until
    INTO _row.state, _row.generation, _row.open_until
    FROM rc_circuit_breakers AS b
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
    FROM rc_circuit_breakers AS b
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
        UPDATE rc_circuit_breakers AS b
        SET state = 'HALF_OPEN',
            generation = _row.generation + 1,
            execution_log = '{}',
            open_until = NULL,
            permits = ARRAY[_now + _row.half_open_timeout],
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        PERFORM rc_notify_transition(p_key, p_namespace, 'OPEN', 'HALF_OPEN',
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
        UPDATE rc_circuit_breakers AS b
        SET permits = _live || (_now + _row.half_open_timeout),
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        RETURN QUERY SELECT true, 'HALF_OPEN'::text, _row.generation, NULL::interval;
        RETURN;
    END IF;
    IF cardinality(_live) < cardinality(_row.permits) THEN
        UPDATE rc_circuit_breakers AS b
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

CREATE OR REPLACE FUNCTION rc_record_many_at(
    p_key text,
    p_namespace text,
    p_successes boolean[],
    p_generations bigint[],
    p_now timestamptz
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    _row rc_circuit_breakers%ROWTYPE;
    _now timestamptz;
    _count integer := coalesce(cardinality(p_successes), 0);
    _first integer := array_lower(p_successes, 1);
    _gen_first integer := array_lower(p_generations, 1);
    _success boolean;
    _generation bigint;
    _size integer;
    _len integer;
    _failed integer;
    _from text;
    _to text;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM rc_check_names(p_key, p_namespace);
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
        FROM rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        IF NOT FOUND THEN
            state := 'CLOSED';
            generation := 0;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT * INTO _row
    FROM rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    FOR _i IN 0 .. _count - 1 LOOP
        _success := p_successes[_first + _i];
        _generation := p_generations[_gen_first + _i];
        -- Lifetime counters count every outcome, even one that cannot move the breaker.
        IF _success THEN
            _row.successes := _row.successes + 1;
        ELSE
            _row.failures := _row.failures + 1;
        END IF;
        -- An OPEN breaker waits for its cooldown, and an outcome of a call admitted in an
        -- earlier generation says nothing about the current phase.
        CONTINUE WHEN _row.state = 'OPEN'
                   OR (_generation IS NOT NULL AND _generation <> _row.generation);

        IF _row.state = 'CLOSED' THEN
            _size := _row.window_size;
        ELSE
            -- The outcome returns one trial permit: the oldest still live.
            _size := coalesce(_row.success_limit_den, _row.window_size);
            _row.permits := (ARRAY(
                SELECT u.expiry FROM unnest(_row.permits) WITH ORDINALITY AS u(expiry, ord)
                WHERE u.expiry > _now ORDER BY u.ord
            ))[2:];
        END IF;
        _row.execution_log := _row.execution_log || _success;
        _len := cardinality(_row.execution_log);
        IF _len > _size THEN
            _row.execution_log := _row.execution_log[_len - _size + 1 : _len];
            _len := _size;
        END IF;
        _row.failure_count := CASE WHEN _success THEN 0 ELSE _row.failure_count + 1 END;
        _failed := cardinality(array_positions(_row.execution_log, false));

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
                _row.open_until := _now + _row.cooldown;
            ELSE
                _row.execution_log := '{}';
                _row.open_until := NULL;
            END IF;
            PERFORM rc_notify_transition(p_key, p_namespace, _from, _to,
                                         _row.generation, _row.open_until);
            _to := NULL;
        END IF;
    END LOOP;

    UPDATE rc_circuit_breakers AS b
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

CREATE OR REPLACE FUNCTION rc_record_at(
    p_key text,
    p_success boolean,
    p_namespace text,
    p_generation bigint,
    p_now timestamptz
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'rc: p_success must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM rc_record_many_at(p_key, p_namespace, ARRAY[p_success],
                                    ARRAY[p_generation], p_now);
END;
$$;

CREATE OR REPLACE FUNCTION rc_force_at(
    p_key text,
    p_state text,
    p_namespace text,
    p_now timestamptz
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    _row rc_circuit_breakers%ROWTYPE;
    _target text := upper(btrim(p_state));
    _from text;
    _now timestamptz;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM rc_check_names(p_key, p_namespace);
    END IF;
    IF _target IS NULL OR _target NOT IN ('CLOSED', 'OPEN', 'HALF_OPEN') THEN
        RAISE EXCEPTION 'rc: p_state must be one of CLOSED, OPEN, HALF_OPEN, got %',
            quote_nullable(p_state)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT * INTO _row
    FROM rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- Every force is a transition, even to the current state, so calls admitted before it
    -- no longer count.
    _from := _row.state;
    IF _target = 'OPEN' THEN
        UPDATE rc_circuit_breakers AS b
        SET state = 'OPEN',
            generation = _row.generation + 1,
            open_until = _now + _row.cooldown,
            permits = '{}',
            updated_at = _now
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        RETURNING b.state, b.generation, b.open_until
        INTO _row.state, _row.generation, _row.open_until;
    ELSE
        UPDATE rc_circuit_breakers AS b
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
    PERFORM rc_notify_transition(p_key, p_namespace, _from, _target,
                                 _row.generation, _row.open_until);
    state := _target;
    generation := _row.generation;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION rc_reset_at(p_key text, p_namespace text, p_now timestamptz)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    _row rc_circuit_breakers%ROWTYPE;
    _now timestamptz;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM rc_check_names(p_key, p_namespace);
    END IF;

    SELECT * INTO _row
    FROM rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
    END IF;
    _now := coalesce(p_now, clock_timestamp());

    -- A fresh CLOSED breaker, counters zeroed; the configuration stays.
    UPDATE rc_circuit_breakers AS b
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
    PERFORM rc_notify_transition(p_key, p_namespace, _row.state, 'CLOSED',
                                 _row.generation + 1, NULL);
    state := 'CLOSED';
    generation := _row.generation + 1;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION rc_configure(
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
SET search_path FROM CURRENT
AS $$
DECLARE
    _row rc_circuit_breakers%ROWTYPE;
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
        PERFORM rc_check_names(p_key, p_namespace);
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

    IF (p_cooldown >= interval '0') IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_cooldown must be >= 0, got %', coalesce(p_cooldown::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_half_open_timeout > interval '0') IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_half_open_timeout must be > 0, got %',
            coalesce(p_half_open_timeout::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT * INTO _row
    FROM rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rc_circuit_breakers AS b (
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
        FROM rc_circuit_breakers AS b
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
        UPDATE rc_circuit_breakers AS b
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

CREATE OR REPLACE FUNCTION rc_try_acquire(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (permitted boolean, state text, generation bigint, retry_after interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN QUERY SELECT * FROM rc_try_acquire_at(p_key, p_namespace, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION rc_record(
    p_key text,
    p_success boolean,
    p_namespace text DEFAULT 'default',
    p_generation bigint DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'rc: p_success must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM rc_record_many_at(p_key, p_namespace, ARRAY[p_success],
                                    ARRAY[p_generation], NULL);
END;
$$;

CREATE OR REPLACE FUNCTION rc_record_many(
    p_key text,
    p_namespace text,
    p_successes boolean[],
    p_generations bigint[] DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN QUERY
    SELECT * FROM rc_record_many_at(p_key, p_namespace, p_successes, p_generations, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION rc_force(p_key text, p_state text, p_namespace text DEFAULT 'default')
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN QUERY SELECT * FROM rc_force_at(p_key, p_state, p_namespace, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION rc_reset(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN QUERY SELECT * FROM rc_reset_at(p_key, p_namespace, NULL);
END;
$$;

CREATE OR REPLACE FUNCTION rc_status(p_key text, p_namespace text DEFAULT 'default')
RETURNS SETOF rc_circuit_breaker_status
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM rc_check_names(p_key, p_namespace);
    END IF;
    RETURN QUERY
    SELECT * FROM rc_circuit_breaker_status AS s
    WHERE s.resource_key = p_key AND s.namespace = p_namespace;
END;
$$;

COMMENT ON TABLE rc_circuit_breakers IS
    'One row per circuit breaker (resource_key, namespace). Change it only through the rc_* '
    'functions, which run the state machine under a row lock.';
COMMENT ON COLUMN rc_circuit_breakers.resource_key IS
    'The protected resource''s name (1 to 255 characters).';
COMMENT ON COLUMN rc_circuit_breakers.namespace IS
    'Isolates groups of breakers (applications, environments, test runs).';
COMMENT ON COLUMN rc_circuit_breakers.state IS
    'CLOSED (calls pass), OPEN (calls rejected until open_until) or HALF_OPEN (trial calls).';
COMMENT ON COLUMN rc_circuit_breakers.failure_count IS
    'Consecutive failures recorded in the current phase.';
COMMENT ON COLUMN rc_circuit_breakers.open_until IS
    'While OPEN: when the cooldown ends and the next call becomes a half-open trial.';
COMMENT ON COLUMN rc_circuit_breakers.execution_log IS
    'The current phase''s window of outcomes, oldest first (true = success). OPEN keeps the '
    'window that tripped it.';
COMMENT ON COLUMN rc_circuit_breakers.created_at IS
    'When the row was created.';
COMMENT ON COLUMN rc_circuit_breakers.updated_at IS
    'When the row last changed.';
COMMENT ON COLUMN rc_circuit_breakers.generation IS
    'Incremented by every transition; outcomes carrying an older generation only count in '
    'successes/failures.';
COMMENT ON COLUMN rc_circuit_breakers.permits IS
    'While HALF_OPEN: expiry times of trial calls admitted and not yet recorded, oldest first.';
COMMENT ON COLUMN rc_circuit_breakers.successes IS
    'Successes ever recorded (every rc_record call, counted or not).';
COMMENT ON COLUMN rc_circuit_breakers.failures IS
    'Failures ever recorded (every rc_record call, counted or not).';
COMMENT ON COLUMN rc_circuit_breakers.failure_limit_num IS
    'Failure limit numerator: trip when failures/window_size reaches the limit (reduced).';
COMMENT ON COLUMN rc_circuit_breakers.failure_limit_den IS
    'Failure limit denominator (reduced).';
COMMENT ON COLUMN rc_circuit_breakers.window_size IS
    'Outcomes a CLOSED breaker judges (by default the failure limit''s denominator).';
COMMENT ON COLUMN rc_circuit_breakers.success_limit_num IS
    'Success limit numerator, or NULL: a half-open phase closes when successes/success_limit_den '
    'reaches it; without it the failure limit decides over window_size outcomes.';
COMMENT ON COLUMN rc_circuit_breakers.success_limit_den IS
    'Success limit denominator (reduced): the number of outcomes a half-open phase judges.';
COMMENT ON COLUMN rc_circuit_breakers.cooldown IS
    'How long the breaker stays OPEN before admitting a trial call.';
COMMENT ON COLUMN rc_circuit_breakers.half_open_timeout IS
    'How long a trial permit is held for a call that never records its outcome.';

COMMENT ON VIEW rc_circuit_breaker_status IS
    'Every breaker in readable form: execution_log as S/F (oldest first), time left in the '
    'cooldown, live trial permits, limits as fractions.';

COMMENT ON FUNCTION rc_try_acquire(text, text) IS
    'May a call run now? Returns permitted, the state and generation after the call, and '
    'retry_after when rejected. Uses the server clock.';
COMMENT ON FUNCTION rc_record(text, boolean, text, bigint) IS
    'Records one call''s outcome. Pass the generation rc_try_acquire returned so that an '
    'outcome from before a transition only counts in the lifetime counters.';
COMMENT ON FUNCTION rc_record_many(text, text, boolean[], bigint[]) IS
    'Records several outcomes in order, exactly as that many rc_record calls would, under one '
    'row lock.';
COMMENT ON FUNCTION rc_configure(text, text, integer, integer, integer, integer, integer,
                                 interval, interval) IS
    'Stores a breaker''s configuration. Limits are fractions in (0, 1]; the window defaults to '
    'the failure limit''s denominator. Keys never configured use failure limit 1/1, cooldown 0.';
COMMENT ON FUNCTION rc_force(text, text, text) IS
    'Forces a transition: OPEN for one cooldown, or a fresh CLOSED or HALF_OPEN phase.';
COMMENT ON FUNCTION rc_reset(text, text) IS
    'Back to a fresh CLOSED breaker with zeroed counters; the configuration stays.';
COMMENT ON FUNCTION rc_status(text, text) IS
    'The rc_circuit_breaker_status row of one breaker (no row if it was never used).';
COMMENT ON FUNCTION rc_try_acquire_at(text, text, timestamptz) IS
    'rc_try_acquire at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION rc_record_at(text, boolean, text, bigint, timestamptz) IS
    'rc_record at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION rc_record_many_at(text, text, boolean[], bigint[], timestamptz) IS
    'rc_record_many at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION rc_force_at(text, text, text, timestamptz) IS
    'rc_force at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION rc_reset_at(text, text, timestamptz) IS
    'rc_reset at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION rc_check_names(text, text) IS
    'Raises invalid_parameter_value for a NULL, empty or over-long key or namespace.';
COMMENT ON FUNCTION rc_notify_transition(text, text, text, text, bigint, timestamptz) IS
    'Announces a transition on the resilient_circuit channel as a small JSON object.';

-- Nothing is executable by default; `pg-setup --app-role` grants the public functions.
REVOKE EXECUTE ON FUNCTION
    rc_check_names(text, text),
    rc_notify_transition(text, text, text, text, bigint, timestamptz),
    rc_try_acquire_at(text, text, timestamptz),
    rc_record_many_at(text, text, boolean[], bigint[], timestamptz),
    rc_record_at(text, boolean, text, bigint, timestamptz),
    rc_force_at(text, text, text, timestamptz),
    rc_reset_at(text, text, timestamptz),
    rc_configure(text, text, integer, integer, integer, integer, integer, interval, interval),
    rc_try_acquire(text, text),
    rc_record(text, boolean, text, bigint),
    rc_record_many(text, text, boolean[], bigint[]),
    rc_force(text, text, text),
    rc_reset(text, text),
    rc_status(text, text)
FROM PUBLIC;
