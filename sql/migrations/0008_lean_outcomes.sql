-- Version 8: a strict call's outcome costs less on the server.
-- An outcome that moves no state commits without waiting for its WAL flush: rc_record and
-- rc_record_many relax synchronous_commit for their own transaction (when it has written
-- nothing before them), and rc_notify_transition, which every transition calls, restores the
-- saved setting, so transitions stay durable. A single success while CLOSED on a count
-- window is applied by rc_record_at in one UPDATE, and rc_record calls rc_record_at.

-- An outcome that moves no state need not wait for its commit's WAL flush: losing the last
-- fraction of a second of counted outcomes in a server crash is harmless, waiting for the disk
-- on every call is not (docs/capacity.md measures both). For this transaction only, and only
-- when it has written nothing yet, so a caller's own earlier writes keep their durability; a
-- transition (rc_notify_transition) restores the setting saved here.
CREATE OR REPLACE FUNCTION @extschema@.rc_relax_commit()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NULL
       AND current_setting('synchronous_commit') <> 'off' THEN
        PERFORM set_config('rc.durable_commit', current_setting('synchronous_commit'), true);
        PERFORM set_config('synchronous_commit', 'off', true);
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
    -- A transition is committed durably: undo rc_relax_commit for this transaction.
    PERFORM set_config('synchronous_commit', current_setting('rc.durable_commit', true), true)
    WHERE current_setting('rc.durable_commit', true) <> '';
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
    -- Nearly every outcome is a success while CLOSED, which cannot move the breaker: on a
    -- count window with no slow calls counted it only shifts the window and the counters,
    -- in one UPDATE, as rc_record_many_at's healthy-batch path would. Any other outcome
    -- (or a row that does not qualify, or does not exist) takes the whole state machine.
    IF p_success AND (p_duration IS NULL
                      OR (p_duration >= interval '0' AND extract(year FROM p_duration) = 0
                          AND extract(month FROM p_duration) = 0)) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET execution_log = b.execution_log[cardinality(b.execution_log) - b.window_size + 2 :]
                            || true,
            slow_log = '{}',
            failure_count = 0,
            successes = b.successes + 1,
            updated_at = coalesce(p_now, clock_timestamp())
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
                                    ARRAY[p_generation], p_now, ARRAY[p_duration]);
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
    PERFORM @extschema@.rc_relax_commit();
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_at(p_key, p_success, p_namespace, p_generation, NULL,
                                           p_duration);
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
    PERFORM @extschema@.rc_relax_commit();
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(p_key, p_namespace, p_successes, p_generations,
                                                NULL, p_durations);
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_notify_transition(text, text, text, text, bigint, timestamptz) IS
    'Announces a transition on the resilient_circuit channel as a small JSON object, and '
    'makes its transaction commit durably again.';
COMMENT ON FUNCTION @extschema@.rc_relax_commit() IS
    'Lets the current transaction, if it has written nothing yet, commit without waiting for '
    'its WAL flush: for recorded outcomes; a transition undoes it.';

REVOKE EXECUTE ON FUNCTION @extschema@.rc_relax_commit() FROM PUBLIC;
