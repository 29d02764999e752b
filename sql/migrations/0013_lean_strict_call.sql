-- Version 13: a strict call costs the server less.
--
--   * rc_try_acquire returns the verdicts that need no lock (a CLOSED, DISABLED or unknown
--     breaker admits; an OPEN one cooling down or held rejects) itself, and rc_record applies
--     a healthy success itself, instead of each calling a second function (rc_try_acquire_at,
--     rc_record_at) whose rows a query then returns: a nested function with a pinned
--     search_path saves and restores the setting, and both start an executor, which cost more
--     than the verdict. Every other case still goes to the same state machine as before.
--   * rc_circuit_breakers_counters_check is the same rule written as one comparison:
--     PostgreSQL reads a table's CHECK constraints back from their stored form on every UPDATE
--     it executes, and the four comparisons' form cost about a fifth of recording an outcome.

ALTER TABLE @extschema@.rc_circuit_breakers
    DROP CONSTRAINT rc_circuit_breakers_counters_check,
    ADD CONSTRAINT rc_circuit_breakers_counters_check
        CHECK (least(failure_count, generation, successes, failures) >= 0);

CREATE OR REPLACE FUNCTION @extschema@.rc_try_acquire(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (permitted boolean, state text, generation bigint, retry_after interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _held boolean;
    _open_until timestamptz;
    _cooldown interval;
BEGIN
    -- The owner may use every namespace: tested inline (a simple expression), so that its
    -- calls skip a function call; any other role goes through rc_check_namespace.
    IF (char_length(p_namespace) BETWEEN 1 AND 255
        AND pg_has_role(session_user, current_user, 'MEMBER')) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_namespace(p_namespace);
    END IF;
    -- rc_try_acquire_at's lock-free verdicts, inline: a nested call with a pinned search_path
    -- and the query that returns its rows cost more than the whole verdict. The output
    -- columns are assigned and returned with RETURN NEXT, which starts no query either.
    IF char_length(p_key) BETWEEN 1 AND 255 AND char_length(p_namespace) BETWEEN 1 AND 255 THEN
        SELECT b.state, b.generation, b.held, b.open_until, b.cooldown
        INTO state, generation, _held, _open_until, _cooldown
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.resource_key = p_key AND b.namespace = p_namespace;
        IF NOT FOUND THEN
            -- A breaker never used is CLOSED; admitting changes nothing, so no row is created.
            permitted := true;
            state := 'CLOSED';
            generation := 0;
            RETURN NEXT;
            RETURN;
        ELSIF state = 'CLOSED' OR state = 'DISABLED' THEN
            permitted := true;
            RETURN NEXT;
            RETURN;
        ELSIF state = 'OPEN' AND _held THEN
            -- Held OPEN has no end of cooldown: callers come back after one cooldown (>= 1 s).
            permitted := false;
            retry_after := greatest(_cooldown, interval '1 second');
            RETURN NEXT;
            RETURN;
        ELSIF state = 'OPEN' THEN
            retry_after := _open_until - clock_timestamp();
            IF retry_after > interval '0' THEN
                permitted := false;
                RETURN NEXT;
                RETURN;
            END IF;
            -- Cooldown over (or never set): the transition is rc_try_acquire_at's.
            retry_after := NULL;
        END IF;
    END IF;
    -- A bad key, or a verdict that may change the row: the whole state machine.
    RETURN QUERY SELECT * FROM @extschema@.rc_try_acquire_at(p_key, p_namespace, NULL);
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
    -- The calls below, inline: every call of a function with a pinned search_path saves and
    -- restores the setting, which costs more than these tests. The owner's test is a simple
    -- expression; any other role goes through rc_check_namespace and its grants.
    IF (char_length(p_namespace) BETWEEN 1 AND 255
        AND pg_has_role(session_user, current_user, 'MEMBER')) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_namespace(p_namespace);
    END IF;
    -- rc_relax_commit.
    IF pg_current_xact_id_if_assigned() IS NULL
       AND current_setting('synchronous_commit') <> 'off' THEN
        PERFORM set_config('rc.durable_commit', current_setting('synchronous_commit'), true);
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- rc_record_at's healthy path: a success while CLOSED on a count window with no slow
    -- calls counted only shifts the window and the counters, in one UPDATE. Any other
    -- outcome (or a row that does not qualify, or does not exist, as for a bad key or
    -- namespace) takes the state machine, which refuses bad input.
    IF p_success AND (p_duration IS NULL
                      OR (p_duration >= interval '0' AND extract(year FROM p_duration) = 0
                          AND extract(month FROM p_duration) = 0)) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET execution_log = b.execution_log[cardinality(b.execution_log) - b.window_size + 2 :]
                            || true,
            slow_log = '{}',
            failure_count = 0,
            successes = b.successes + 1,
            updated_at = clock_timestamp()
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
          AND b.state = 'CLOSED' AND b.window_duration IS NULL
          AND b.slow_call_duration IS NULL
          AND (p_generation IS NULL OR p_generation = b.generation)
        RETURNING b.state, b.generation INTO state, generation;
        IF FOUND THEN
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, ARRAY[p_success],
                                                ARRAY[p_generation], NULL, ARRAY[p_duration]);
END;
$$;
