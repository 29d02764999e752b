-- Version 10: retry budgets are forgotten, collected and listed like breakers.
--
--   * rc_budget_forget deletes one budget, rc_budget_gc the budgets unused for p_idle, and
--     rc_gc collects those along with the idle breakers (it still returns how many breakers).
--   * rc_check_idle holds the check of p_idle that rc_gc and rc_budget_gc share.
--   * rc_budget_status lists the budgets of the caller's namespaces, for the fleet collector.
--   * Roles that may use the budgets (EXECUTE on rc_budget_withdraw) may call the new
--     functions, as pg-setup --app-role grants them on a new install.

-- Raises the error for an idle interval rc_gc and rc_budget_gc cannot use.
CREATE OR REPLACE FUNCTION @extschema@.rc_check_idle(p_idle interval)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_idle IS NULL OR extract(year FROM p_idle) <> 0 OR extract(month FROM p_idle) <> 0
       OR p_idle < interval '0' OR p_idle > interval '3650 days' THEN
        RAISE EXCEPTION 'rc: p_idle must be between 0 and 3650 days, in days, hours, minutes or '
            'seconds (no months or years), got %', coalesce(p_idle::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
    PERFORM @extschema@.rc_check_idle(p_idle);
    -- Only CLOSED breakers: an OPEN or HALF_OPEN one still protects something. Rows are
    -- skipped rather than waited for when a call holds their lock: they are not idle.
    WITH doomed AS (
        SELECT b.resource_key, b.namespace
        FROM @extschema@.rc_circuit_breakers AS b
        WHERE b.state = 'CLOSED' AND b.updated_at < clock_timestamp() - p_idle
          AND ((SELECT @extschema@.rc_session_is_owner())
               OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
                          WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r
                                              WHERE r.rolname = session_user)
                            AND g.namespace IN (b.namespace, '*')))
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM @extschema@.rc_circuit_breakers AS b
    USING doomed AS d
    WHERE b.resource_key = d.resource_key AND b.namespace = d.namespace;
    GET DIAGNOSTICS _deleted = ROW_COUNT;
    -- The retry budgets idle as long go too (rc_budget_gc alone tells how many).
    PERFORM @extschema@.rc_budget_gc(p_idle);
    RETURN _deleted;
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_gc(interval) IS
    'Deletes the CLOSED breakers of the caller''s namespaces not changed for p_idle, and the '
    'retry budgets not used for p_idle; returns how many breakers.';

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_forget(
    p_name text,
    p_namespace text DEFAULT 'default'
)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (char_length(p_name) BETWEEN 1 AND 255) IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_name must be 1 to 255 characters long, got %',
            coalesce(char_length(p_name) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A NULL namespace is refused as an empty one (22023).
    PERFORM @extschema@.rc_check_namespace(coalesce(p_namespace, ''));
    DELETE FROM @extschema@.rc_retry_budgets AS b
    WHERE b.name = p_name AND b.namespace = p_namespace;
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_gc(p_idle interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _deleted bigint;
BEGIN
    PERFORM @extschema@.rc_check_idle(p_idle);
    -- After ten idle minutes a bucket holds exactly what a new one starts with (its tokens
    -- decayed, the floor refilled): only its lifetime counters go. Rows a call holds locked
    -- are skipped rather than waited for: they are not idle.
    WITH doomed AS (
        SELECT b.name, b.namespace
        FROM @extschema@.rc_retry_budgets AS b
        WHERE b.updated_at < clock_timestamp() - p_idle
          -- The budgets of the caller's namespaces: those rc_budget_status lists.
          AND (b.name, b.namespace) IN (SELECT s.name, s.namespace
                                        FROM @extschema@.rc_budget_status() AS s)
        FOR UPDATE OF b SKIP LOCKED
    )
    DELETE FROM @extschema@.rc_retry_budgets AS b
    USING doomed AS d
    WHERE b.name = d.name AND b.namespace = d.namespace;
    GET DIAGNOSTICS _deleted = ROW_COUNT;
    RETURN _deleted;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_status(p_namespace text DEFAULT NULL)
RETURNS TABLE (
    name text,
    namespace text,
    balance double precision,
    min_per_second double precision,
    first_attempts bigint,
    retries bigint,
    refusals bigint,
    created_at timestamptz,
    updated_at timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Each application role sees its own namespaces only (the owner sees all).
    RETURN QUERY
    SELECT b.name::text, b.namespace::text, b.balance, b.min_per_second, b.first_attempts,
           b.retries, b.refusals, b.created_at, b.updated_at
    FROM @extschema@.rc_retry_budgets AS b
    WHERE (p_namespace IS NULL OR b.namespace = p_namespace)
      AND ((SELECT @extschema@.rc_session_is_owner())
           OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
                      WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r
                                          WHERE r.rolname = session_user)
                        AND g.namespace IN (b.namespace, '*')))
    ORDER BY b.namespace, b.name;
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_check_idle(interval) IS
    'Raises invalid_parameter_value for an idle interval that is NULL, negative, over 3650 '
    'days, or holds months or years.';
COMMENT ON FUNCTION @extschema@.rc_budget_forget(text, text) IS
    'Deletes one retry budget (true if it existed); its next use starts a fresh bucket.';
COMMENT ON FUNCTION @extschema@.rc_budget_gc(interval) IS
    'Deletes the retry budgets of the caller''s namespaces not used for p_idle; returns how '
    'many.';
COMMENT ON FUNCTION @extschema@.rc_budget_status(text) IS
    'Every retry budget of the caller''s namespaces (or of p_namespace): the balance as last '
    'settled (at updated_at) and the lifetime counters.';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_check_idle(interval),
    @extschema@.rc_budget_forget(text, text),
    @extschema@.rc_budget_gc(interval),
    @extschema@.rc_budget_status(text)
FROM PUBLIC;

CREATE TEMPORARY TABLE rc_budget_grantees ON COMMIT DROP AS
SELECT DISTINCT r.rolname AS role_name
FROM pg_catalog.pg_proc AS p
CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) a.grantee
-- The row type's namespace is this schema: found without spelling its name in a literal.
WHERE p.proname OPERATOR(pg_catalog.=) 'rc_budget_withdraw'
  AND p.pronamespace OPERATOR(pg_catalog.=) (
      SELECT t.typnamespace FROM pg_catalog.pg_type AS t
      WHERE t.oid OPERATOR(pg_catalog.=)
            pg_catalog.pg_typeof(NULL::@extschema@.rc_retry_budgets))
  AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
  AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

DO $$
DECLARE
    _grant record;
BEGIN
    FOR _grant IN
        SELECT p.oid::pg_catalog.regprocedure AS function, g.role_name
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN pg_temp.rc_budget_grantees AS g
        WHERE p.proname OPERATOR(pg_catalog.=) ANY (
                  ARRAY['rc_budget_forget', 'rc_budget_gc', 'rc_budget_status'])
          AND p.pronamespace OPERATOR(pg_catalog.=) (
              SELECT t.typnamespace FROM pg_catalog.pg_type AS t
              WHERE t.oid OPERATOR(pg_catalog.=)
                    pg_catalog.pg_typeof(NULL::@extschema@.rc_retry_budgets))
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', _grant.function,
                                  _grant.role_name);
    END LOOP;
END;
$$;
