-- Version 19: channels are listened on by the database, never named in a statement's text.
--
--   * A client that asked rc_channel for a channel then sent `LISTEN "rc_…"` as SQL text: that
--     text stays in pg_stat_activity.query (for as long as a watching connection idles) and in
--     pg_stat_statements, where members of pg_monitor / pg_read_all_stats read it without any
--     namespace grant, and could then LISTEN on it. rc_listen(namespace) and rc_listen_all()
--     run the LISTEN inside the function and return the channel as data.
--   * The roles that could execute rc_try_acquire may execute both.

-- LISTENs on p_namespace's channel for the session (from its next commit, as LISTEN does),
-- for a role that may use the namespace, and returns the channel: notifications name it.
CREATE OR REPLACE FUNCTION @extschema@.rc_listen(p_namespace text DEFAULT 'default')
RETURNS text
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _channel text;
BEGIN
    -- rc_check_namespace refuses a bad length but leaves NULL to its caller.
    IF p_namespace IS NULL THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    _channel := @extschema@.rc_notify_channel(p_namespace);
    EXECUTE format('LISTEN %I', _channel);
    RETURN _channel;
END;
$$;

-- LISTENs on every channel rc_channels() gives the caller, and returns them.
CREATE OR REPLACE FUNCTION @extschema@.rc_listen_all()
RETURNS TABLE (namespace text, channel text)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row record;
BEGIN
    FOR _row IN SELECT c.namespace, c.channel FROM @extschema@.rc_channels() AS c LOOP
        EXECUTE format('LISTEN %I', _row.channel);
        namespace := _row.namespace;
        channel := _row.channel;
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_listen(text) IS
    'LISTENs on p_namespace''s channel and returns it, so that the channel never appears in a '
    'statement''s text; insufficient_privilege unless the session''s login role may use the '
    'namespace.';
COMMENT ON FUNCTION @extschema@.rc_listen_all() IS
    'LISTENs on every channel rc_channels() gives the session and returns them (namespace, '
    'channel).';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_listen(text),
    @extschema@.rc_listen_all()
FROM PUBLIC;

DO $$
DECLARE
    _grant record;
BEGIN
    FOR _grant IN
        SELECT DISTINCT f.oid::pg_catalog.regprocedure AS function, r.rolname AS role_name
        FROM pg_catalog.pg_proc AS p
        CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
        JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) a.grantee
        JOIN pg_catalog.pg_proc AS f ON f.pronamespace OPERATOR(pg_catalog.=) p.pronamespace
        -- The row type's namespace is this schema: found without spelling its name in a literal.
        WHERE p.proname OPERATOR(pg_catalog.=) 'rc_try_acquire'
          AND p.pronamespace OPERATOR(pg_catalog.=) (
              SELECT t.typnamespace FROM pg_catalog.pg_type AS t
              WHERE t.oid OPERATOR(pg_catalog.=)
                    pg_catalog.pg_typeof(NULL::@extschema@.rc_circuit_breakers))
          AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
          AND f.proname OPERATOR(pg_catalog.=) ANY (ARRAY['rc_listen', 'rc_listen_all'])
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', _grant.function,
                                  _grant.role_name);
    END LOOP;
END;
$$;
