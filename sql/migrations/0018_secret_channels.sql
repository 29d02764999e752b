-- Version 18: transitions are announced on secret channels, one per namespace.
--
--   * Every transition was announced on the channel 'resilient_circuit', on which any role that
--     can connect may LISTEN: a role granted no namespace (or another one) learnt every
--     namespace's keys, states, generations and cooldowns as they changed, and two installs in
--     different schemas of one database heard each other. A transition is now announced on its
--     namespace's channel, named from a random secret that only the owner reads
--     (rc_notify_secret, made here), and on the channel of every namespace.
--   * rc_channel(namespace) gives the channel to a role allowed the namespace (the same
--     insufficient_privilege error as every function otherwise); rc_channels() gives those of
--     every transition the caller may see. The roles that could execute rc_try_acquire may
--     execute both.
--   * Processes of an older version keep working but hear no transition from now on.

-- Transitions are announced on channels that only roles allowed a namespace can name. Any role
-- that can connect may LISTEN on any channel, so a channel everybody can spell would tell a role
-- without a grant every namespace's keys and states as they change. A channel is 'rc_' and the
-- first 40 hex digits of sha256(secret || namespace): without the secret, which only the owner
-- reads, it can be neither guessed nor computed, and two installs (two schemas of a database)
-- never share one. The truncated digest also leaves nothing to extend: knowing one
-- namespace's channel tells nothing of another's.
CREATE TABLE @extschema@.rc_notify_secret (
    singleton boolean NOT NULL DEFAULT true,
    secret    bytea   NOT NULL,
    CONSTRAINT rc_notify_secret_pkey PRIMARY KEY (singleton),
    CONSTRAINT rc_notify_secret_singleton_check CHECK (singleton),
    CONSTRAINT rc_notify_secret_secret_check CHECK (octet_length(secret) >= 16)
);
REVOKE ALL ON TABLE @extschema@.rc_notify_secret FROM PUBLIC;
-- 32 bytes from two version-4 UUIDs (244 random bits): gen_random_uuid() draws from the
-- server's strong random source on every supported version, random() does not.
INSERT INTO @extschema@.rc_notify_secret (secret)
SELECT pg_catalog.decode(pg_catalog.replace(
    pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', ''), 'hex');

-- The channel of p_namespace's transitions; NULL: the channel of every namespace's (a byte no
-- namespace's UTF-8 holds keeps the two apart). Run by the owner only: it reads the secret.
CREATE OR REPLACE FUNCTION @extschema@.rc_notify_channel(p_namespace text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'rc_' || left(encode(sha256(s.secret || coalesce(convert_to(p_namespace, 'UTF8'),
                                                            '\x00'::bytea)), 'hex'), 40)
    FROM @extschema@.rc_notify_secret AS s
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
DECLARE
    _payload text;
BEGIN
    -- A transition is committed durably: undo rc_relax_commit for this transaction.
    PERFORM set_config('synchronous_commit', current_setting('rc.durable_commit', true), true)
    WHERE current_setting('rc.durable_commit', true) <> '';
    _payload := json_build_object(
        'namespace', p_namespace,
        'key', p_key,
        'from', p_from,
        'to', p_to,
        'generation', p_generation,
        'open_until', p_open_until
    )::text;
    -- Delivered at commit, so listeners never hear of a transition that was rolled back: on
    -- the namespace's channel, and on the channel of every namespace (for watching them all).
    PERFORM pg_notify(@extschema@.rc_notify_channel(p_namespace), _payload);
    PERFORM pg_notify(@extschema@.rc_notify_channel(NULL), _payload);
END;
$$;

-- The channel on which p_namespace's transitions are announced, for a role that may use it.
CREATE OR REPLACE FUNCTION @extschema@.rc_channel(p_namespace text DEFAULT 'default')
RETURNS text
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- rc_check_namespace refuses a bad length but leaves NULL to its caller.
    IF p_namespace IS NULL THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN @extschema@.rc_notify_channel(p_namespace);
END;
$$;

-- The channels that announce every transition the caller may see: for the owner and a role
-- granted '*', the one channel of all namespaces (namespace '*'); otherwise one per namespace
-- granted. Read again after reconnecting, since grants change.
CREATE OR REPLACE FUNCTION @extschema@.rc_channels()
RETURNS TABLE (namespace text, channel text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF @extschema@.rc_session_is_owner()
       OR EXISTS (SELECT 1 FROM @extschema@.rc_namespace_grants AS g
                  WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r
                                      WHERE r.rolname = session_user)
                    AND g.namespace = '*') THEN
        RETURN QUERY SELECT '*'::text, @extschema@.rc_notify_channel(NULL);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT g.namespace::text, @extschema@.rc_notify_channel(g.namespace)
    FROM @extschema@.rc_namespace_grants AS g
    WHERE g.role_oid = (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = session_user)
    ORDER BY 1;
END;
$$;

COMMENT ON FUNCTION @extschema@.rc_notify_transition(text, text, text, text, bigint, timestamptz) IS
    'Announces a transition as a small JSON object on its namespace''s channel and on the '
    'channel of every namespace, and makes its transaction commit durably again.';
COMMENT ON TABLE @extschema@.rc_notify_secret IS
    'The random secret from which transition channels are derived (one row); readable by the '
    'owner only.';
COMMENT ON FUNCTION @extschema@.rc_notify_channel(text) IS
    'The channel announcing p_namespace''s transitions (NULL: every namespace''s), derived '
    'from the install''s secret.';
COMMENT ON FUNCTION @extschema@.rc_channel(text) IS
    'The channel to LISTEN on for p_namespace''s transitions; insufficient_privilege unless '
    'the session''s login role may use the namespace.';
COMMENT ON FUNCTION @extschema@.rc_channels() IS
    'The channels to LISTEN on for every transition the session''s login role may see: '
    'namespace ''*'' and the channel of all namespaces for the owner and roles granted ''*'', '
    'else one per namespace granted.';

REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_notify_channel(text),
    @extschema@.rc_channel(text),
    @extschema@.rc_channels()
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
          AND f.proname OPERATOR(pg_catalog.=) ANY (ARRAY['rc_channel', 'rc_channels'])
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', _grant.function,
                                  _grant.role_name);
    END LOOP;
END;
$$;
