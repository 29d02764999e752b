-- Version 16: recording a success while CLOSED costs the server less, on a time window most.
--
--   * rc_record tests the owner's valid call, and relaxes its commit, in one expression
--     (PL/pgSQL prepares each expression anew in every transaction), and applies a healthy
--     success on a time window itself when its newest bucket is still current: one more call
--     in that bucket, as rc_record_many_at would count it. A success with a duration still
--     goes to the state machine (a duration matters only where slow calls are counted).
--     rc_record_at, which the shared test vectors drive at explicit times, takes the same
--     two paths. Server instructions of rc_record's success per call (callgrind, PostgreSQL
--     15, synchronous_commit off): count window 203k -> 200k (230k -> 210k with
--     synchronous_commit on), time window 944k -> 299k.
--   * bucket_calls leaves rc_circuit_breakers_check's columns for a trigger of its own,
--     rc_circuit_breakers_check_buckets, which runs the same rules when an UPDATE leaves
--     bucket_calls and bucket_failures of different lengths: the rules read only its length,
--     and a success counted in a bucket would otherwise run every rule.

DROP TRIGGER rc_circuit_breakers_check ON @extschema@.rc_circuit_breakers;

-- AFTER, not BEFORE: PostgreSQL locks the row again for a BEFORE UPDATE row trigger on every
-- UPDATE, even one that assigns none of its columns.
CREATE TRIGGER rc_circuit_breakers_check
AFTER INSERT OR UPDATE OF state, permits, held, failure_limit_num, failure_limit_den,
    window_size, success_limit_num, success_limit_den, cooldown, half_open_timeout,
    last_cooldown, bucket_head, bucket_failures, bucket_slow, window_duration,
    minimum_calls, slow_call_duration, slow_call_limit_num, slow_call_limit_den,
    cooldown_factor, max_cooldown, generation
ON @extschema@.rc_circuit_breakers
FOR EACH ROW EXECUTE FUNCTION @extschema@.rc_check_breaker_row();

-- bucket_calls is watched apart: a success counted in the newest bucket of a time window
-- assigns it alone, and must not run every rule. The rules read only its length, which must
-- equal bucket_failures' (and be 0 or 10): an UPDATE that assigns bucket_calls and none of
-- the columns above keeps bucket_failures' length, which passed the rules, so it breaks them
-- exactly when the two lengths differ. A writer assigning both is checked by the trigger above.
CREATE TRIGGER rc_circuit_breakers_check_buckets
AFTER UPDATE OF bucket_calls
ON @extschema@.rc_circuit_breakers
FOR EACH ROW
WHEN (cardinality(NEW.bucket_calls) <> cardinality(NEW.bucket_failures))
EXECUTE FUNCTION @extschema@.rc_check_breaker_row();

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
    -- PL/pgSQL prepares each expression it evaluates anew in every transaction, and pays per
    -- node, so the owner's valid call is one test: it also relaxes the commit as
    -- rc_relax_commit would (set_config only when the setting is not 'off' and the transaction
    -- has written nothing yet). Any other role, and a NULL p_success, go through the checks.
    IF (p_success IS NOT NULL AND char_length(p_namespace) BETWEEN 1 AND 255
        AND pg_has_role(session_user, current_user, 'MEMBER')
        AND (current_setting('synchronous_commit') = 'off'
             OR pg_current_xact_id_if_assigned() IS NOT NULL
             OR (set_config('rc.durable_commit', current_setting('synchronous_commit'), true)
                     IS NOT NULL
                 AND set_config('synchronous_commit', 'off', true) IS NOT NULL))) IS NOT TRUE
    THEN
        IF p_success IS NULL THEN
            RAISE EXCEPTION 'rc: p_success must be true or false, got NULL'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM @extschema@.rc_check_namespace(p_namespace);
        -- rc_relax_commit.
        IF pg_current_xact_id_if_assigned() IS NULL
           AND current_setting('synchronous_commit') <> 'off' THEN
            PERFORM set_config('rc.durable_commit', current_setting('synchronous_commit'), true);
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
    END IF;
    -- Nearly every outcome is a success while CLOSED, which cannot move the breaker: it only
    -- shifts the window and the counters, in one UPDATE, as rc_record_many_at would. Any other
    -- outcome (or a row that does not qualify, or does not exist, as for a bad key or
    -- namespace) takes the state machine, which also refuses bad input. A duration matters
    -- only where slow calls are counted, which these UPDATEs leave to the state machine.
    IF p_success AND p_duration IS NULL THEN
        -- A count window: the newest outcomes, with this success last.
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
        -- A time window whose newest bucket is still current (rc_record_many_at's bucket
        -- number, at the time read once the row is locked, is bucket_head): one more call in
        -- it. A bucket to expire, or a window not started, takes the state machine.
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET bucket_calls[b.bucket_head % 10 + 1] = b.bucket_calls[b.bucket_head % 10 + 1] + 1,
            slow_log = '{}',
            failure_count = 0,
            successes = b.successes + 1,
            updated_at = clock_timestamp()
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
          AND b.state = 'CLOSED' AND b.window_duration IS NOT NULL
          AND b.slow_call_duration IS NULL
          AND (p_generation IS NULL OR p_generation = b.generation)
          AND cardinality(b.bucket_calls) = 10 AND b.window_start IS NOT NULL
          AND (extract(epoch FROM clock_timestamp() - b.window_start) * 1000000)::bigint * 10
              / (extract(epoch FROM b.window_duration) * 1000000)::bigint <= b.bucket_head
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
    -- in one UPDATE, as rc_record_many_at's healthy-batch path would; on a time window whose
    -- newest bucket is current it counts one more call in that bucket. Any other outcome
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
        -- A time window whose newest bucket is current: one more call in it (as rc_record).
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET bucket_calls[b.bucket_head % 10 + 1] = b.bucket_calls[b.bucket_head % 10 + 1] + 1,
            slow_log = '{}',
            failure_count = 0,
            successes = b.successes + 1,
            updated_at = coalesce(p_now, clock_timestamp())
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
          AND b.state = 'CLOSED' AND b.window_duration IS NOT NULL
          AND b.slow_call_duration IS NULL
          AND (p_generation IS NULL OR p_generation = b.generation)
          AND cardinality(b.bucket_calls) = 10 AND b.window_start IS NOT NULL
          AND (extract(epoch FROM coalesce(p_now, clock_timestamp()) - b.window_start)
               * 1000000)::bigint * 10
              / (extract(epoch FROM b.window_duration) * 1000000)::bigint <= b.bucket_head
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
