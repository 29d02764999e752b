-- Version 5: time windows, minimum calls, slow calls, growing cooldowns, held and DISABLED
-- states, and releasing a trial permit.
--
--   * New columns hold the configuration (window_duration, minimum_calls, slow_call_duration and
--     its limit, cooldown_factor, max_cooldown) and the state (slow_log, held, last_cooldown, a
--     time window's buckets); every existing row keeps its behaviour: the defaults are 0.4.5's.
--   * rc_record, rc_record_many, rc_force and rc_configure take new trailing parameters with
--     defaults, so calls written for earlier versions work unchanged; their old signatures are dropped
--     and the roles that could execute them may execute the new ones.
--   * rc_release gives back the trial permit of a call whose outcome is not counted.

ALTER TABLE @extschema@.rc_circuit_breakers
    ADD COLUMN slow_log            boolean[]        NOT NULL DEFAULT '{}',
    ADD COLUMN held                boolean          NOT NULL DEFAULT false,
    ADD COLUMN last_cooldown       interval         NOT NULL DEFAULT '0',
    ADD COLUMN window_start        timestamptz,
    ADD COLUMN bucket_head         bigint           NOT NULL DEFAULT 0,
    ADD COLUMN bucket_calls        integer[]        NOT NULL DEFAULT '{}',
    ADD COLUMN bucket_failures     integer[]        NOT NULL DEFAULT '{}',
    ADD COLUMN bucket_slow         integer[]        NOT NULL DEFAULT '{}',
    ADD COLUMN window_duration     interval,
    ADD COLUMN minimum_calls       integer,
    ADD COLUMN slow_call_duration  interval,
    ADD COLUMN slow_call_limit_num integer,
    ADD COLUMN slow_call_limit_den integer,
    ADD COLUMN cooldown_factor     double precision NOT NULL DEFAULT 1,
    ADD COLUMN max_cooldown        interval;

ALTER TABLE @extschema@.rc_circuit_breakers
    DROP CONSTRAINT rc_circuit_breakers_state_check,
    ADD CONSTRAINT rc_circuit_breakers_state_check
        CHECK (state IN ('CLOSED', 'OPEN', 'HALF_OPEN', 'DISABLED')),
    ADD CONSTRAINT rc_circuit_breakers_held_check
        CHECK (CASE state WHEN 'DISABLED' THEN held WHEN 'OPEN' THEN true ELSE NOT held END),
    ADD CONSTRAINT rc_circuit_breakers_buckets_check
        CHECK (cardinality(bucket_calls) IN (0, 10)
               AND cardinality(bucket_failures) = cardinality(bucket_calls)
               AND cardinality(bucket_slow) = cardinality(bucket_calls) AND bucket_head >= 0),
    ADD CONSTRAINT rc_circuit_breakers_window_duration_check
        CHECK (window_duration >= interval '10 microseconds'
               AND window_duration <= interval '365 days'
               AND extract(year FROM window_duration) = 0
               AND extract(month FROM window_duration) = 0),
    ADD CONSTRAINT rc_circuit_breakers_minimum_calls_check
        CHECK (minimum_calls >= 1 AND (window_duration IS NOT NULL OR minimum_calls <= window_size)),
    ADD CONSTRAINT rc_circuit_breakers_slow_call_check
        CHECK ((slow_call_duration IS NULL AND slow_call_limit_num IS NULL
                AND slow_call_limit_den IS NULL)
               OR (slow_call_duration > interval '0' AND slow_call_duration <= interval '365 days'
                   AND extract(year FROM slow_call_duration) = 0
                   AND extract(month FROM slow_call_duration) = 0
                   AND slow_call_limit_num > 0 AND slow_call_limit_num <= slow_call_limit_den
                   AND gcd(slow_call_limit_num, slow_call_limit_den) = 1)),
    ADD CONSTRAINT rc_circuit_breakers_cooldown_growth_check
        CHECK (cooldown_factor BETWEEN 1 AND 100
               AND last_cooldown >= interval '0' AND last_cooldown <= interval '365 days'
               AND (max_cooldown IS NULL
                    OR (max_cooldown >= cooldown AND max_cooldown <= interval '365 days'
                        AND extract(year FROM max_cooldown) = 0
                        AND extract(month FROM max_cooldown) = 0)));

-- The roles that may execute the functions whose signatures change keep that right. The
-- row type's namespace is this schema: found without spelling its name in a literal.
CREATE TEMPORARY TABLE rc_upgrade_grantees ON COMMIT DROP AS
SELECT DISTINCT r.rolname AS role_name
FROM pg_catalog.pg_proc AS p
CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
WHERE p.proname = 'rc_record'
  AND p.pronamespace = (SELECT t.typnamespace FROM pg_catalog.pg_type AS t
                        WHERE t.oid = pg_catalog.pg_typeof(NULL::@extschema@.rc_circuit_breakers))
  AND a.privilege_type = 'EXECUTE'
  AND a.grantee <> p.proowner;

DROP FUNCTION @extschema@.rc_record_many_at(text, text, boolean[], bigint[], timestamptz);
DROP FUNCTION @extschema@.rc_record_at(text, boolean, text, bigint, timestamptz);
DROP FUNCTION @extschema@.rc_force_at(text, text, text, timestamptz);
DROP FUNCTION @extschema@.rc_configure(text, text, integer, integer, integer, integer, integer, interval, interval);
DROP FUNCTION @extschema@.rc_record(text, boolean, text, bigint);
DROP FUNCTION @extschema@.rc_record_many(text, text, boolean[], bigint[]);
DROP FUNCTION @extschema@.rc_force(text, text, text);

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
              WHERE g.role_name = session_user AND g.namespace IN (b.namespace, '*'));

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

    -- Fast path, no lock and no write: a CLOSED (or DISABLED) breaker admits and an OPEN one
    -- still cooling down (or held) rejects, whatever concurrent calls do. This is nearly every
    -- call.
    SELECT b.state, b.generation, b.open_until, b.held, b.cooldown
    INTO _row.state, _row.generation, _row.open_until, _row.held, _row.cooldown
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    IF NOT FOUND THEN
        -- A breaker never used is CLOSED; admitting changes nothing, so no row is created.
        RETURN QUERY SELECT true, 'CLOSED'::text, 0::bigint, NULL::interval;
        RETURN;
    END IF;
    _now := coalesce(p_now, clock_timestamp());
    IF _row.state = 'CLOSED' OR _row.state = 'DISABLED' THEN
        RETURN QUERY SELECT true, _row.state::text, _row.generation, NULL::interval;
        RETURN;
    ELSIF _row.state = 'OPEN' AND _row.held THEN
        -- Held OPEN has no end of cooldown: callers come back after one cooldown (>= 1 s).
        RETURN QUERY SELECT false, 'OPEN'::text, _row.generation,
            greatest(_row.cooldown, interval '1 second');
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

    IF _row.state = 'CLOSED' OR _row.state = 'DISABLED' THEN
        RETURN QUERY SELECT true, _row.state::text, _row.generation, NULL::interval;
        RETURN;
    END IF;

    IF _row.state = 'OPEN' THEN
        IF _row.held THEN
            RETURN QUERY SELECT false, 'OPEN'::text, _row.generation,
                greatest(_row.cooldown, interval '1 second');
            RETURN;
        END IF;
        IF _now < _row.open_until THEN
            RETURN QUERY SELECT false, 'OPEN'::text, _row.generation, _row.open_until - _now;
            RETURN;
        END IF;
        -- Cooldown over (or never set): this call is the first trial of a fresh half-open phase.
        -- last_cooldown stays: a reopening from this phase grows the cooldown from it.
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET state = 'HALF_OPEN',
            generation = _row.generation + 1,
            execution_log = '{}',
            slow_log = '{}',
            open_until = NULL,
            permits = ARRAY[_now + _row.half_open_timeout],
            window_start = NULL,
            bucket_head = 0,
            bucket_calls = '{}',
            bucket_failures = '{}',
            bucket_slow = '{}',
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
    p_now timestamptz,
    p_durations interval[] DEFAULT NULL
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
    _dur_first integer := array_lower(p_durations, 1);
    _success boolean;
    _slow boolean;
    _generation bigint;
    -- The current phase's window as a ring, so that an outcome costs O(1) whatever the
    -- window's size: _ring[_head] is the oldest of its _len outcomes, _failed counts its
    -- failures, and _slow_ring/_slowed the same for slow calls. It is loaded from
    -- execution_log/slow_log at the phase's first counted outcome and written back only then,
    -- so a window no outcome reached stays exactly as it was.
    _ring boolean[];
    _slow_ring boolean[];
    _loaded boolean := false;
    _head integer;
    _size integer;
    _len integer;
    _failed integer;
    _slowed integer;
    _minimum integer;
    _released integer;
    -- slow_log is kept only while slow calls are counted: unused, it costs nothing.
    _keep_slow boolean;
    -- A CLOSED time window: calls, failures and slow calls of its ten buckets.
    _calls integer[];
    _fails integer[];
    _slows integer[];
    _number bigint;
    _slot integer;
    _cooldown interval;
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
    IF p_durations IS NOT NULL
       AND (array_ndims(p_durations) > 1 OR cardinality(p_durations) <> _count
            OR EXISTS (SELECT 1 FROM unnest(p_durations) AS d(took) WHERE d.took < interval '0'
                       OR extract(year FROM d.took) <> 0 OR extract(month FROM d.took) <> 0)) THEN
        RAISE EXCEPTION 'rc: p_durations must be NULL or hold one duration >= 0 (or NULL) per '
            'outcome in p_successes, got %', p_durations
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
    _keep_slow := _row.slow_call_duration IS NOT NULL;
    IF NOT _keep_slow THEN
        _row.slow_log := '{}';
    ELSIF cardinality(_row.slow_log) <> cardinality(_row.execution_log) THEN
        -- A window written before slow calls were counted (or by set_state): none was slow.
        _row.slow_log := array_fill(false, ARRAY[cardinality(_row.execution_log)]);
    END IF;
    _calls := _row.bucket_calls;
    _fails := _row.bucket_failures;
    _slows := _row.bucket_slow;

    -- Lifetime counters count every outcome, even one that cannot move the breaker. The
    -- same pass counts the outcomes of the current generation (or none), for the fast path.
    SELECT _row.successes + count(*) FILTER (WHERE u.ok),
           _row.failures + count(*) FILTER (WHERE NOT u.ok),
           count(*) FILTER (WHERE u.gen IS NULL OR u.gen = _row.generation),
           count(*) FILTER (WHERE NOT u.ok AND (u.gen IS NULL OR u.gen = _row.generation)),
           count(*) FILTER (WHERE u.took > _row.slow_call_duration
                              AND (u.gen IS NULL OR u.gen = _row.generation))
    INTO _row.successes, _row.failures, _len, _failed, _slowed
    FROM unnest(p_successes, p_generations, p_durations) AS u(ok, gen, took);

    -- A healthy breaker's batch holds no failure nor slow call: it cannot trip, so a count
    -- window is simply its newest outcomes followed by that many successes, with no loop.
    IF _row.state = 'CLOSED' AND _row.window_duration IS NULL AND _failed = 0 AND _slowed = 0
       AND _len > 0 THEN
        _size := _row.window_size;
        _len := least(_len, _size);
        _row.execution_log := _row.execution_log[
                                  cardinality(_row.execution_log) - (_size - _len) + 1 :]
                              || array_fill(true, ARRAY[_len]);
        IF _keep_slow THEN
            _row.slow_log := _row.slow_log[cardinality(_row.slow_log) - (_size - _len) + 1 :]
                             || array_fill(false, ARRAY[_len]);
        END IF;
        _row.failure_count := 0;
        _count := 0;
    END IF;

    FOR _i IN 0 .. _count - 1 LOOP
        -- An OPEN breaker waits for its cooldown, a DISABLED one counts nothing, and an outcome
        -- of a call admitted in an earlier generation says nothing about the current phase.
        EXIT WHEN _row.state = 'OPEN' OR _row.state = 'DISABLED';
        _generation := p_generations[_gen_first + _i];
        CONTINUE WHEN _generation IS NOT NULL AND _generation <> _row.generation;
        _success := p_successes[_first + _i];
        _slow := p_durations[_dur_first + _i] > _row.slow_call_duration IS TRUE;
        _row.failure_count := CASE WHEN _success THEN 0 ELSE _row.failure_count + 1 END;

        IF _row.state = 'CLOSED' AND _row.window_duration IS NOT NULL THEN
            -- A time window: ten buckets counted from window_start; the ones that expired by
            -- now are emptied before the outcome lands in the newest.
            IF _row.window_start IS NULL OR cardinality(_calls) = 0 THEN
                _row.window_start := _now;
                _row.bucket_head := 0;
                _calls := array_fill(0, ARRAY[10]);
                _fails := array_fill(0, ARRAY[10]);
                _slows := array_fill(0, ARRAY[10]);
            END IF;
            _number := greatest(_row.bucket_head,
                (extract(epoch FROM _now - _row.window_start) * 1000000)::bigint * 10
                / (extract(epoch FROM _row.window_duration) * 1000000)::bigint);
            IF _number - _row.bucket_head >= 10 THEN
                _calls := array_fill(0, ARRAY[10]);
                _fails := array_fill(0, ARRAY[10]);
                _slows := array_fill(0, ARRAY[10]);
            ELSE
                FOR _expired IN _row.bucket_head + 1 .. _number LOOP
                    _slot := (_expired % 10)::integer + 1;
                    _calls[_slot] := 0;
                    _fails[_slot] := 0;
                    _slows[_slot] := 0;
                END LOOP;
            END IF;
            _row.bucket_head := _number;
            _slot := (_number % 10)::integer + 1;
            _calls[_slot] := _calls[_slot] + 1;
            IF NOT _success THEN
                _fails[_slot] := _fails[_slot] + 1;
            END IF;
            IF _slow THEN
                _slows[_slot] := _slows[_slot] + 1;
            END IF;
            SELECT sum(w.calls), sum(w.failed), sum(w.slowed) INTO _len, _failed, _slowed
            FROM unnest(_calls, _fails, _slows) AS w(calls, failed, slowed);
            _minimum := coalesce(_row.minimum_calls, 10);
        ELSE
            IF NOT _loaded THEN
                _size := CASE WHEN _row.state = 'CLOSED' THEN _row.window_size
                              ELSE coalesce(_row.success_limit_den, _row.window_size) END;
                _minimum := coalesce(_row.minimum_calls, _size);
                _len := least(cardinality(_row.execution_log), _size);
                _ring := _row.execution_log[cardinality(_row.execution_log) - _len + 1 :]
                         || array_fill(NULL::boolean, ARRAY[_size - _len]);
                _slow_ring := _row.slow_log[cardinality(_row.slow_log) - _len + 1 :]
                              || array_fill(NULL::boolean, ARRAY[_size - _len]);
                _head := 1;
                _failed := cardinality(array_positions(_ring, false));
                _slowed := cardinality(array_positions(_slow_ring, true));
                _released := 0;
                _loaded := true;
            END IF;
            IF _row.state = 'HALF_OPEN' THEN
                -- The outcome returns one trial permit: the oldest still live.
                _released := _released + 1;
            END IF;
            IF _len < _size THEN
                _ring[_head + _len] := _success;
                _slow_ring[_head + _len] := _slow;
                _len := _len + 1;
            ELSE
                IF NOT _ring[_head] THEN
                    _failed := _failed - 1;
                END IF;
                IF _slow_ring[_head] THEN
                    _slowed := _slowed - 1;
                END IF;
                _ring[_head] := _success;
                _slow_ring[_head] := _slow;
                _head := _head % _size + 1;
            END IF;
            IF NOT _success THEN
                _failed := _failed + 1;
            END IF;
            IF _slow THEN
                _slowed := _slowed + 1;
            END IF;
        END IF;

        -- Products in bigint: a limit's terms go up to 2^31 and the window to 10000. Only a
        -- failure or a slow call can raise a rate, so nothing else is judged in CLOSED.
        IF _row.state = 'CLOSED' THEN
            IF (NOT _success OR _slow) AND _len >= _minimum
               AND (_failed::bigint * _row.failure_limit_den
                        >= _row.failure_limit_num::bigint * _len
                    OR _slowed::bigint * _row.slow_call_limit_den
                        >= _row.slow_call_limit_num::bigint * _len) THEN
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
            IF _slowed::bigint * _row.slow_call_limit_den
               >= _row.slow_call_limit_num::bigint * _size THEN
                _to := 'OPEN';
            END IF;
        END IF;

        IF _to IS NOT NULL THEN
            _from := _row.state;
            _row.state := _to;
            _row.generation := _row.generation + 1;
            _row.permits := '{}';
            IF _to = 'OPEN' THEN
                -- The window is kept: it shows what tripped the breaker. Each reopening since
                -- the breaker last closed multiplies the cooldown, in whole microseconds.
                IF _loaded THEN
                    _row.execution_log := CASE WHEN _len < _size THEN _ring[1 : _len]
                        ELSE _ring[_head : _size] || _ring[1 : _head - 1] END;
                    IF _keep_slow THEN
                        _row.slow_log := CASE WHEN _len < _size THEN _slow_ring[1 : _len]
                            ELSE _slow_ring[_head : _size] || _slow_ring[1 : _head - 1] END;
                    END IF;
                END IF;
                IF _row.last_cooldown = interval '0' OR _row.cooldown_factor = 1 THEN
                    _cooldown := _row.cooldown;
                ELSE
                    _cooldown := make_interval(secs => least(
                        floor((extract(epoch FROM _row.last_cooldown) * 1000000)::bigint::float8
                              * _row.cooldown_factor)::bigint,
                        (extract(epoch FROM coalesce(_row.max_cooldown, interval '365 days'))
                         * 1000000)::bigint) / 1000000.0);
                END IF;
                _row.open_until := _now + _cooldown;
                _row.last_cooldown := _cooldown;
            ELSE
                _row.execution_log := '{}';
                _row.slow_log := '{}';
                _row.open_until := NULL;
                _row.last_cooldown := interval '0';
                _row.window_start := NULL;
                _row.bucket_head := 0;
                _calls := '{}';
                _fails := '{}';
                _slows := '{}';
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
        IF _keep_slow THEN
            _row.slow_log := CASE WHEN _len < _size THEN _slow_ring[1 : _len]
                                  ELSE _slow_ring[_head : _size] || _slow_ring[1 : _head - 1] END;
        END IF;
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
        slow_log = _row.slow_log,
        failure_count = _row.failure_count,
        open_until = _row.open_until,
        permits = _row.permits,
        successes = _row.successes,
        failures = _row.failures,
        last_cooldown = _row.last_cooldown,
        window_start = _row.window_start,
        bucket_head = _row.bucket_head,
        bucket_calls = _calls,
        bucket_failures = _fails,
        bucket_slow = _slows,
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
    p_now timestamptz,
    p_duration interval DEFAULT NULL
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
                                    ARRAY[p_generation], p_now, ARRAY[p_duration]);
END;
$$;

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
            quote_nullable(p_state)
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
        INSERT INTO @extschema@.rc_circuit_breakers (resource_key, namespace)
        VALUES (p_key, p_namespace)
        ON CONFLICT DO NOTHING;
        SELECT * INTO _row
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
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

CREATE OR REPLACE FUNCTION @extschema@.rc_release_at(
    p_key text,
    p_namespace text,
    p_generation bigint,
    p_now timestamptz
)
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

    -- Only a half-open phase holds permits: anything else answers without a lock or a write.
    SELECT b.state, b.generation INTO _row.state, _row.generation
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'CLOSED'::text, 0::bigint;
        RETURN;
    END IF;
    IF _row.state = 'HALF_OPEN' THEN
        SELECT * INTO _row
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
        FOR UPDATE;
        _now := coalesce(p_now, clock_timestamp());
        -- A release of another generation's call gives back no permit of this phase; one
        -- without a generation gives back the oldest permit still live.
        IF _row.state = 'HALF_OPEN'
           AND (p_generation IS NULL OR p_generation = _row.generation) THEN
            UPDATE @extschema@.rc_circuit_breakers AS b
            SET permits = (ARRAY(
                    SELECT u.expiry FROM unnest(_row.permits) WITH ORDINALITY AS u(expiry, ord)
                    WHERE u.expiry > _now ORDER BY u.ord
                ))[2:],
                updated_at = _now
            WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        END IF;
    END IF;
    RETURN QUERY SELECT _row.state::text, _row.generation;
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
    p_half_open_timeout interval DEFAULT '10 seconds',
    p_window_duration interval DEFAULT NULL,
    p_minimum_calls integer DEFAULT NULL,
    p_slow_call_duration interval DEFAULT NULL,
    p_slow_call_limit_num integer DEFAULT NULL,
    p_slow_call_limit_den integer DEFAULT NULL,
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
    -- bigint so that flipping the sign of -2^31 cannot overflow.
    _fnum bigint := p_failure_limit_num;
    _fden bigint := p_failure_limit_den;
    _snum bigint := p_success_limit_num;
    _sden bigint := p_success_limit_den;
    _lnum bigint := p_slow_call_limit_num;
    _lden bigint := p_slow_call_limit_den;
    _gcd bigint;
    _window integer;
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
    IF p_minimum_calls < 1 OR (p_window_duration IS NULL AND p_minimum_calls > _window) THEN
        RAISE EXCEPTION 'rc: p_minimum_calls must be >= 1 and, with a count window, at most '
            'p_window_size (%), got %', _window, p_minimum_calls
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

CREATE OR REPLACE FUNCTION @extschema@.rc_record(
    p_key text,
    p_success boolean,
    p_namespace text DEFAULT 'default',
    p_generation bigint DEFAULT NULL,
    p_duration interval DEFAULT NULL
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
                                    ARRAY[p_generation], NULL, ARRAY[p_duration]);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_record_many(
    p_key text,
    p_namespace text,
    p_successes boolean[],
    p_generations bigint[] DEFAULT NULL,
    p_durations interval[] DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, p_successes, p_generations,
                                                NULL, p_durations);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_force(
    p_key text,
    p_state text,
    p_namespace text DEFAULT 'default',
    p_hold boolean DEFAULT false
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY SELECT * FROM @extschema@.rc_force_at(p_key, p_state, p_namespace, NULL, p_hold);
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_release(
    p_key text,
    p_namespace text DEFAULT 'default',
    p_generation bigint DEFAULT NULL
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY SELECT * FROM @extschema@.rc_release_at(p_key, p_namespace, p_generation, NULL);
END;
$$;

COMMENT ON COLUMN @extschema@.rc_circuit_breakers.state IS
    'CLOSED (calls pass), OPEN (calls rejected until open_until, or held), HALF_OPEN '
    '(trial calls) or DISABLED (every call passes, nothing trips).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.slow_log IS
    'Beside execution_log: which of its outcomes were slow calls.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.held IS
    'OPEN or DISABLED until an operator forces another state or resets the breaker.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.last_cooldown IS
    'The latest opening''s cooldown since the breaker last closed: a reopening '
    'multiplies it by cooldown_factor.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.window_start IS
    'A time window''s origin: bucket n covers [n, n + 1) tenths of '
    'window_duration after it.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.bucket_head IS
    'The number of a time window''s newest bucket, counted from window_start.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.bucket_calls IS
    'A time window''s calls per bucket (ten buckets, a ring indexed by bucket '
    'number mod 10), or empty.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.bucket_failures IS
    'A time window''s failures per bucket.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.bucket_slow IS
    'A time window''s slow calls per bucket.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.window_duration IS
    'The time window''s length, or NULL for a window of window_size outcomes.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.minimum_calls IS
    'Outcomes the window must hold before a trip is judged (NULL: window_size, or '
    '10 for a time window).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.slow_call_duration IS
    'A call that took longer is slow (NULL: slow calls are not counted).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.slow_call_limit_num IS
    'Slow-call limit numerator: trip when slow/calls reaches it (reduced).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.slow_call_limit_den IS
    'Slow-call limit denominator (reduced).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.cooldown_factor IS
    'Each reopening without a CLOSED in between multiplies the cooldown by '
    'this.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.max_cooldown IS
    'The longest a grown cooldown gets (NULL: 365 days).';

COMMENT ON FUNCTION @extschema@.rc_record_many_at(text, text, boolean[], bigint[], timestamptz, interval[]) IS
    'rc_record_many at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_record_at(text, boolean, text, bigint, timestamptz, interval) IS
    'rc_record at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_force_at(text, text, text, timestamptz, boolean) IS
    'rc_force at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_configure(text, text, integer, integer, integer, integer, integer, interval, interval,
    interval, integer, interval, integer, integer, double precision, interval) IS
    'Stores a breaker''s configuration. Limits are fractions in (0, 1]; the window defaults to '
    'the failure limit''s denominator, or is a time window of p_window_duration; '
    'p_minimum_calls outcomes are needed before a trip; calls longer than '
    'p_slow_call_duration are slow; each reopening multiplies the cooldown by '
    'p_cooldown_factor up to p_max_cooldown. Keys never configured use failure limit 1/1, '
    'cooldown 0.';
COMMENT ON FUNCTION @extschema@.rc_record(text, boolean, text, bigint, interval) IS
    'Records one call''s outcome. Pass the generation rc_try_acquire returned so that an '
    'outcome from before a transition only counts in the lifetime counters, and the '
    'call''s duration so that a slow call counts as one.';
COMMENT ON FUNCTION @extschema@.rc_record_many(text, text, boolean[], bigint[], interval[]) IS
    'Records several outcomes in order, exactly as that many rc_record calls would, under one '
    'row lock.';
COMMENT ON FUNCTION @extschema@.rc_force(text, text, text, boolean) IS
    'Forces a transition: OPEN for one cooldown (held OPEN with p_hold), DISABLED (every '
    'call permitted, nothing trips, until the next force or reset), or a fresh CLOSED or '
    'HALF_OPEN phase.';
COMMENT ON FUNCTION @extschema@.rc_release_at(text, text, bigint, timestamptz) IS
    'rc_release at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_release(text, text, bigint) IS
    'A call whose outcome is not counted ended: gives back the half-open trial permit it '
    'held (pass the generation rc_try_acquire returned). Counts nothing.';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_record_many_at(text, text, boolean[], bigint[], timestamptz, interval[]),
    @extschema@.rc_record_at(text, boolean, text, bigint, timestamptz, interval),
    @extschema@.rc_force_at(text, text, text, timestamptz, boolean),
    @extschema@.rc_release_at(text, text, bigint, timestamptz),
    @extschema@.rc_configure(text, text, integer, integer, integer, integer, integer, interval, interval,
    interval, integer, interval, integer, integer, double precision, interval),
    @extschema@.rc_record(text, boolean, text, bigint, interval),
    @extschema@.rc_record_many(text, text, boolean[], bigint[], interval[]),
    @extschema@.rc_force(text, text, text, boolean),
    @extschema@.rc_release(text, text, bigint)
FROM PUBLIC;

DO $$
DECLARE
    _grant record;
BEGIN
    FOR _grant IN
        SELECT p.oid::pg_catalog.regprocedure AS function, g.role_name
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN pg_temp.rc_upgrade_grantees AS g
        WHERE p.proname IN ('rc_configure', 'rc_record', 'rc_record_many', 'rc_force', 'rc_release')
          AND p.pronamespace = (SELECT t.typnamespace FROM pg_catalog.pg_type AS t
                                WHERE t.oid = pg_catalog.pg_typeof(
                                    NULL::@extschema@.rc_circuit_breakers))
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', _grant.function,
                                  _grant.role_name);
    END LOOP;
END;
$$;
