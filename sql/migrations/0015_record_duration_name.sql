-- Version 15: rc_record refuses a bad p_duration itself.
--
-- A duration below zero, or with months or years, went on to rc_record_many_at, whose
-- error named its own parameter, p_durations, which a caller of rc_record never passed.
-- rc_record now tests it just before delegating, on the path that already costs a nested
-- call: the healthy success it applies itself never reaches the test, and its UPDATE only
-- matches a valid duration, so that path costs what it did.

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
    -- PL/pgSQL prepares each expression it evaluates anew in every transaction, and every
    -- call of a function with a pinned search_path saves and restores the setting: the checks
    -- are one test for the owner's valid call; any other role goes through rc_check_namespace.
    IF (p_success IS NOT NULL AND char_length(p_namespace) BETWEEN 1 AND 255
        AND pg_has_role(session_user, current_user, 'MEMBER')) IS NOT TRUE THEN
        IF p_success IS NULL THEN
            RAISE EXCEPTION 'rc: p_success must be true or false, got NULL'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM @extschema@.rc_check_namespace(p_namespace);
    END IF;
    -- rc_relax_commit.
    IF pg_current_xact_id_if_assigned() IS NULL
       AND current_setting('synchronous_commit') <> 'off' THEN
        PERFORM set_config('rc.durable_commit', current_setting('synchronous_commit'), true);
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- Nearly every outcome is a success while CLOSED, which cannot move the breaker: on a
    -- count window with no slow calls counted it only shifts the window and the counters, in
    -- one UPDATE, as rc_record_many_at's healthy-batch path would. Any other outcome (or a row
    -- that does not qualify, or does not exist, as for a bad key or namespace) takes the state
    -- machine, which also refuses bad input.
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
    -- Refused here, not by rc_record_many_at, whose error names its own parameter.
    IF p_duration < interval '0' OR extract(year FROM p_duration) <> 0
       OR extract(month FROM p_duration) <> 0 THEN
        RAISE EXCEPTION 'rc: p_duration must be NULL or a duration >= 0 in days, hours, minutes '
            'or seconds (no months or years), got %', p_duration
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, ARRAY[p_success],
                                                ARRAY[p_generation], NULL, ARRAY[p_duration]);
END;
$$;
