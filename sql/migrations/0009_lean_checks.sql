-- Version 9: recording an outcome and admitting a call cost the server less.
--
--   * The breaker's rules other than its counters' move from CHECK constraints, which
--     PostgreSQL prepares again for every UPDATE, to a trigger that runs only when a row is
--     inserted or one of the columns the rules read is assigned: an outcome assigns none of
--     them. The rows in place passed the constraints, so they pass the trigger's rules.
--   * rc_check_namespace tests the owner without starting the executor, and rc_try_acquire and
--     rc_record test it inline; rc_record relaxes its commit inline.

ALTER TABLE @extschema@.rc_circuit_breakers
    DROP CONSTRAINT rc_circuit_breakers_state_check,
    DROP CONSTRAINT rc_circuit_breakers_permits_check,
    DROP CONSTRAINT rc_circuit_breakers_failure_limit_check,
    DROP CONSTRAINT rc_circuit_breakers_window_size_check,
    DROP CONSTRAINT rc_circuit_breakers_success_limit_check,
    DROP CONSTRAINT rc_circuit_breakers_cooldown_check,
    DROP CONSTRAINT rc_circuit_breakers_half_open_timeout_check,
    DROP CONSTRAINT rc_circuit_breakers_held_check,
    DROP CONSTRAINT rc_circuit_breakers_buckets_check,
    DROP CONSTRAINT rc_circuit_breakers_window_duration_check,
    DROP CONSTRAINT rc_circuit_breakers_minimum_calls_check,
    DROP CONSTRAINT rc_circuit_breakers_slow_call_check,
    DROP CONSTRAINT rc_circuit_breakers_cooldown_growth_check;

-- The rules a breaker's row must follow, checked by a trigger rather than CHECK constraints:
-- PostgreSQL prepares every CHECK constraint of a table again for each UPDATE it executes,
-- which made up about half the cost of recording an outcome, although an outcome writes
-- none of the columns these rules read. The trigger runs for every new row and for every
-- UPDATE that assigns one of the columns the rules read (rc_circuit_breakers_check), so a
-- row that passed them keeps passing them until one of those columns is written again, by
-- anyone, the owner included. The counters, which every outcome writes, keep their CHECK
-- constraint. Each rule is the former constraint's, under its name: a NULL passes, as in a
-- CHECK constraint.
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
    END;
    IF _broken IS NOT NULL THEN
        RAISE EXCEPTION 'new row for relation "%" violates check constraint "%"',
            TG_TABLE_NAME, _broken
            USING ERRCODE = 'check_violation', CONSTRAINT = _broken, TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END;
$$;

-- AFTER, not BEFORE: PostgreSQL locks the row again for a BEFORE UPDATE row trigger on every
-- UPDATE, even one that assigns none of its columns.
CREATE TRIGGER rc_circuit_breakers_check
AFTER INSERT OR UPDATE OF state, permits, held, failure_limit_num, failure_limit_den,
    window_size, success_limit_num, success_limit_den, cooldown, half_open_timeout,
    last_cooldown, bucket_head, bucket_calls, bucket_failures, bucket_slow, window_duration,
    minimum_calls, slow_call_duration, slow_call_limit_num, slow_call_limit_den,
    cooldown_factor, max_cooldown
ON @extschema@.rc_circuit_breakers
FOR EACH ROW EXECUTE FUNCTION @extschema@.rc_check_breaker_row();

CREATE OR REPLACE FUNCTION @extschema@.rc_check_namespace(p_namespace text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The length first: an over-long value is a bad parameter (22023), never echoed, whoever
    -- may use it. A NULL namespace is left to the caller's name check.
    IF char_length(p_namespace) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got % characters',
            char_length(p_namespace)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Called only from the SECURITY DEFINER functions, where current_user is their owner.
    -- Two tests, not one: without a subquery the first is a simple expression, which
    -- PL/pgSQL evaluates without starting the executor, so the owner's calls skip that cost.
    IF p_namespace IS NULL OR pg_has_role(session_user, current_user, 'MEMBER') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
               WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r
                                   WHERE r.rolname = session_user)
                 AND g.namespace IN (p_namespace, '*')) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'rc: role % may not use namespace %', quote_ident(session_user),
        quote_nullable(p_namespace)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'pg-setup grants an application role its namespaces.';
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_try_acquire(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (permitted boolean, state text, generation bigint, retry_after interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The owner may use every namespace: tested inline (a simple expression), so that its
    -- calls skip a function call; any other role goes through rc_check_namespace.
    IF (char_length(p_namespace) BETWEEN 1 AND 255
        AND pg_has_role(session_user, current_user, 'MEMBER')) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_namespace(p_namespace);
    END IF;
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
    -- The two calls below, inline: every call of a function with a pinned search_path saves
    -- and restores the setting, which costs more than these tests. The owner's test is a
    -- simple expression; any other role goes through rc_check_namespace and its grants.
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
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_at(p_key, p_success, p_namespace, p_generation, NULL,
                                           p_duration);
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_check_breaker_row() IS
    'Trigger of rc_circuit_breakers: refuses a row that breaks a breaker''s rules '
    '(check_violation, naming the rule), on insert and on each update of a column they read.';
REVOKE EXECUTE ON FUNCTION @extschema@.rc_check_breaker_row() FROM PUBLIC;
