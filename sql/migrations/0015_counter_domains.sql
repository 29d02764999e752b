-- Version 15: recording an outcome no longer reads a CHECK constraint back; rc_record names
-- p_duration in its own error.
--
--   * The counters' rule (never below zero) moves from the table's CHECK constraint to two
--     domains, the new types of the counters an outcome writes, whose constraints keep its
--     name, and, for generation (which functions return as bigint), to rc_check_breaker_row,
--     whose trigger now watches it: only transitions write it. PostgreSQL reads a
--     table's CHECK constraints back from their stored form and prepares them on every UPDATE
--     it executes, whichever columns it assigns; a domain's rule stays prepared and runs only
--     for the columns an UPDATE assigns. Server instructions of rc_record's healthy success
--     (callgrind, PostgreSQL 15): 236k -> 207k. A column's type cannot change under a view,
--     so rc_circuit_breaker_status and rc_status, which returns its rows, are made again
--     (rc_status from its catalog definition), with the privileges they had.
--   * rc_record refuses a bad p_duration itself, just before delegating to
--     rc_record_many_at, whose error named its own parameter, p_durations. The healthy
--     success it applies itself never reaches the test.

CREATE DOMAIN @extschema@.rc_count_int AS integer
    CONSTRAINT rc_circuit_breakers_counters_check CHECK (VALUE >= 0);
CREATE DOMAIN @extschema@.rc_count_bigint AS bigint
    CONSTRAINT rc_circuit_breakers_counters_check CHECK (VALUE >= 0);

-- The rules of the trigger, now with generation's.
CREATE OR REPLACE FUNCTION @extschema@.rc_check_breaker_row()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _broken text;
BEGIN
    -- One expression, evaluated once: each rule is tested only while the ones before it hold.
    _broken := CASE
        WHEN (NEW.state IN ('CLOSED', 'OPEN', 'HALF_OPEN', 'DISABLED')) IS FALSE
            THEN 'rc_circuit_breakers_state_check'
        WHEN (NEW.state = 'HALF_OPEN' OR cardinality(NEW.permits) = 0) IS FALSE
            THEN 'rc_circuit_breakers_permits_check'
        WHEN (NEW.failure_limit_num > 0 AND NEW.failure_limit_num <= NEW.failure_limit_den
              AND gcd(NEW.failure_limit_num, NEW.failure_limit_den) = 1) IS FALSE
            THEN 'rc_circuit_breakers_failure_limit_check'
        WHEN (NEW.window_size BETWEEN 1 AND 10000) IS FALSE
            THEN 'rc_circuit_breakers_window_size_check'
        WHEN ((NEW.success_limit_num IS NULL AND NEW.success_limit_den IS NULL)
              OR (NEW.success_limit_num IS NOT NULL AND NEW.success_limit_den IS NOT NULL
                  AND NEW.success_limit_num > 0
                  AND NEW.success_limit_num <= NEW.success_limit_den
                  AND NEW.success_limit_den <= 10000
                  AND gcd(NEW.success_limit_num, NEW.success_limit_den) = 1)) IS FALSE
            THEN 'rc_circuit_breakers_success_limit_check'
        WHEN (NEW.cooldown >= interval '0' AND NEW.cooldown <= interval '365 days'
              AND extract(year FROM NEW.cooldown) = 0
              AND extract(month FROM NEW.cooldown) = 0) IS FALSE
            THEN 'rc_circuit_breakers_cooldown_check'
        WHEN (NEW.half_open_timeout > interval '0'
              AND NEW.half_open_timeout <= interval '365 days'
              AND extract(year FROM NEW.half_open_timeout) = 0
              AND extract(month FROM NEW.half_open_timeout) = 0) IS FALSE
            THEN 'rc_circuit_breakers_half_open_timeout_check'
        WHEN (CASE NEW.state WHEN 'DISABLED' THEN NEW.held WHEN 'OPEN' THEN true
                             ELSE NOT NEW.held END) IS FALSE
            THEN 'rc_circuit_breakers_held_check'
        WHEN (cardinality(NEW.bucket_calls) IN (0, 10)
              AND cardinality(NEW.bucket_failures) = cardinality(NEW.bucket_calls)
              AND cardinality(NEW.bucket_slow) = cardinality(NEW.bucket_calls)
              AND NEW.bucket_head >= 0) IS FALSE
            THEN 'rc_circuit_breakers_buckets_check'
        WHEN (NEW.window_duration >= interval '10 microseconds'
              AND NEW.window_duration <= interval '365 days'
              AND extract(year FROM NEW.window_duration) = 0
              AND extract(month FROM NEW.window_duration) = 0) IS FALSE
            THEN 'rc_circuit_breakers_window_duration_check'
        WHEN (NEW.minimum_calls >= 1
              AND (NEW.window_duration IS NOT NULL OR NEW.minimum_calls <= NEW.window_size))
             IS FALSE
            THEN 'rc_circuit_breakers_minimum_calls_check'
        WHEN ((NEW.slow_call_duration IS NULL AND NEW.slow_call_limit_num IS NULL
               AND NEW.slow_call_limit_den IS NULL)
              OR (NEW.slow_call_duration > interval '0'
                  AND NEW.slow_call_duration <= interval '365 days'
                  AND extract(year FROM NEW.slow_call_duration) = 0
                  AND extract(month FROM NEW.slow_call_duration) = 0
                  AND NEW.slow_call_limit_num > 0
                  AND NEW.slow_call_limit_num <= NEW.slow_call_limit_den
                  AND gcd(NEW.slow_call_limit_num, NEW.slow_call_limit_den) = 1)) IS FALSE
            THEN 'rc_circuit_breakers_slow_call_check'
        WHEN (NEW.cooldown_factor BETWEEN 1 AND 100
              AND NEW.last_cooldown >= interval '0' AND NEW.last_cooldown <= interval '365 days'
              AND (NEW.max_cooldown IS NULL
                   OR (NEW.max_cooldown >= NEW.cooldown
                       AND NEW.max_cooldown <= interval '365 days'
                       AND extract(year FROM NEW.max_cooldown) = 0
                       AND extract(month FROM NEW.max_cooldown) = 0))) IS FALSE
            THEN 'rc_circuit_breakers_cooldown_growth_check'
        WHEN (NEW.generation >= 0) IS FALSE
            THEN 'rc_circuit_breakers_counters_check'
    END;
    IF _broken IS NOT NULL THEN
        RAISE EXCEPTION 'new row for relation "%" violates check constraint "%"',
            TG_TABLE_NAME, _broken
            USING ERRCODE = 'check_violation', CONSTRAINT = _broken, TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER rc_circuit_breakers_check ON @extschema@.rc_circuit_breakers;

-- AFTER, not BEFORE: PostgreSQL locks the row again for a BEFORE UPDATE row trigger on every
-- UPDATE, even one that assigns none of its columns.
CREATE TRIGGER rc_circuit_breakers_check
AFTER INSERT OR UPDATE OF state, permits, held, failure_limit_num, failure_limit_den,
    window_size, success_limit_num, success_limit_den, cooldown, half_open_timeout,
    last_cooldown, bucket_head, bucket_calls, bucket_failures, bucket_slow, window_duration,
    minimum_calls, slow_call_duration, slow_call_limit_num, slow_call_limit_den,
    cooldown_factor, max_cooldown, generation
ON @extschema@.rc_circuit_breakers
FOR EACH ROW EXECUTE FUNCTION @extschema@.rc_check_breaker_row();

-- A column's type cannot change under a view: the view and rc_status (which returns its
-- rows) are dropped and made again. rc_status, the comments and the privileges come back
-- from the catalog as they stand; the view is written out, since the catalog's text of it
-- parses back into a different (equivalent) query tree than schema.sql's.
SELECT set_config('rc.migration_status_def', pg_get_functiondef(p.oid), true),
       set_config('rc.migration_status_comment', obj_description(p.oid, 'pg_proc'), true),
       set_config('rc.migration_status_acl', coalesce(p.proacl::text, ''), true),
       set_config('rc.migration_view_comment', obj_description(c.oid, 'pg_class'), true),
       set_config('rc.migration_view_acl', coalesce(c.relacl::text, ''), true)
FROM pg_proc AS p, pg_class AS c
WHERE p.oid = '@extschema@.rc_status(text, text)'::regprocedure
  AND c.oid = '@extschema@.rc_circuit_breaker_status'::regclass;

DROP FUNCTION @extschema@.rc_status(text, text);
DROP VIEW @extschema@.rc_circuit_breaker_status;

ALTER TABLE @extschema@.rc_circuit_breakers
    DROP CONSTRAINT rc_circuit_breakers_counters_check,
    ALTER COLUMN failure_count TYPE @extschema@.rc_count_int,
    ALTER COLUMN successes TYPE @extschema@.rc_count_bigint,
    ALTER COLUMN failures TYPE @extschema@.rc_count_bigint;

-- Unchanged from version 14.
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
              WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = session_user)
                AND g.namespace IN (b.namespace, '*'));


DO $$
DECLARE
    _owner oid := (SELECT c.relowner FROM pg_class AS c
                   WHERE c.oid = '@extschema@.rc_circuit_breakers'::regclass);
    _target text;
    _acl text;
    _grant record;
BEGIN
    EXECUTE current_setting('rc.migration_status_def');
    EXECUTE format('COMMENT ON VIEW @extschema@.rc_circuit_breaker_status IS %L',
                   current_setting('rc.migration_view_comment'));
    EXECUTE format('COMMENT ON FUNCTION @extschema@.rc_status(text, text) IS %L',
                   current_setting('rc.migration_status_comment'));
    -- The privileges other roles held, granted again by the owner. An empty list is the
    -- default one, which the new objects have too.
    FOR _target, _acl IN
        VALUES ('TABLE @extschema@.rc_circuit_breaker_status',
                current_setting('rc.migration_view_acl')),
               ('FUNCTION @extschema@.rc_status(text, text)',
                current_setting('rc.migration_status_acl'))
    LOOP
        CONTINUE WHEN _acl = '';
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', _target);
        FOR _grant IN
            SELECT * FROM aclexplode(_acl::aclitem[]) AS a WHERE a.grantee <> _owner
        LOOP
            EXECUTE format('GRANT %s ON %s TO %s%s', _grant.privilege_type, _target,
                           CASE WHEN _grant.grantee = 0 THEN 'PUBLIC'
                                ELSE _grant.grantee::regrole::text END,
                           CASE WHEN _grant.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
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
