-- resilient_circuit: the breaker table and its state machine, as a fresh install creates them.
--
-- `resilient-circuit-cli pg-setup` runs this file on an empty schema, inside one transaction.
-- Every reference to one of our objects is written `@extschema@.name`; the installer replaces
-- @extschema@ with the target schema's quoted name. The functions pin
-- `search_path = pg_catalog, pg_temp`, so no name they use (table, function, operator, type)
-- can be resolved through a schema that another role may create objects in.
--
-- Older installs are upgraded by sql/migrations/ instead; tests/test_schema_equivalence.py
-- proves both paths give the same catalog.

-- The counters an outcome writes never go below zero. The rule is a domain's CHECK, not the
-- table's: PostgreSQL reads a table's CHECK constraints back from their stored form on every
-- UPDATE it executes, whichever columns it assigns (a sixth of recording an outcome), while a
-- domain's rule is kept prepared and runs only for the columns an UPDATE assigns. Both
-- domains name the rule as the table constraint did, so a refused write reports the same
-- constraint. generation, which functions return as bigint (a domain would not match their
-- declared result), has the same rule in rc_check_breaker_row: only transitions write it.
CREATE DOMAIN @extschema@.rc_count_int AS integer
    CONSTRAINT rc_circuit_breakers_counters_check CHECK (VALUE >= 0);
CREATE DOMAIN @extschema@.rc_count_bigint AS bigint
    CONSTRAINT rc_circuit_breakers_counters_check CHECK (VALUE >= 0);

CREATE TABLE @extschema@.rc_circuit_breakers (
    -- The first eight columns are the ones resilient_circuit 0.4.5 created, in its order, so
    -- monitoring queries written for it keep working and upgraded tables match this one.
    resource_key      varchar(255)  NOT NULL,
    namespace         varchar(255)  NOT NULL DEFAULT 'default',
    state             varchar(20)   NOT NULL DEFAULT 'CLOSED',
    failure_count     @extschema@.rc_count_int    NOT NULL DEFAULT 0,
    open_until        timestamptz,
    execution_log     boolean[]     NOT NULL DEFAULT '{}',
    created_at        timestamptz   NOT NULL DEFAULT now(),
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    generation        bigint        NOT NULL DEFAULT 0,
    permits           timestamptz[] NOT NULL DEFAULT '{}',
    successes         @extschema@.rc_count_bigint NOT NULL DEFAULT 0,
    failures          @extschema@.rc_count_bigint NOT NULL DEFAULT 0,
    failure_limit_num integer       NOT NULL DEFAULT 1,
    failure_limit_den integer       NOT NULL DEFAULT 1,
    window_size       integer       NOT NULL DEFAULT 1,
    success_limit_num integer,
    success_limit_den integer,
    cooldown          interval      NOT NULL DEFAULT '0',
    half_open_timeout interval      NOT NULL DEFAULT '10 seconds',
    slow_log            boolean[]        NOT NULL DEFAULT '{}',
    held                boolean          NOT NULL DEFAULT false,
    last_cooldown       interval         NOT NULL DEFAULT '0',
    window_start        timestamptz,
    bucket_head         bigint           NOT NULL DEFAULT 0,
    bucket_calls        integer[]        NOT NULL DEFAULT '{}',
    bucket_failures     integer[]        NOT NULL DEFAULT '{}',
    bucket_slow         integer[]        NOT NULL DEFAULT '{}',
    window_duration     interval,
    minimum_calls       integer,
    slow_call_duration  interval,
    slow_call_limit_num integer,
    slow_call_limit_den integer,
    cooldown_factor     double precision NOT NULL DEFAULT 1,
    max_cooldown        interval,
    CONSTRAINT rc_circuit_breakers_pkey PRIMARY KEY (resource_key, namespace)
);

CREATE INDEX idx_rc_circuit_breakers_state ON @extschema@.rc_circuit_breakers (state);
CREATE INDEX idx_rc_circuit_breakers_namespace ON @extschema@.rc_circuit_breakers (namespace);

-- The rules a breaker's row must follow, checked by a trigger rather than CHECK constraints:
-- PostgreSQL prepares every CHECK constraint of a table again for each UPDATE it executes,
-- which made up about half the cost of recording an outcome, although an outcome writes
-- none of the columns these rules read. The trigger runs for every new row and for every
-- UPDATE that assigns one of the columns the rules read (rc_circuit_breakers_check), so a
-- row that passed them keeps passing them until one of those columns is written again, by
-- anyone, the owner included (bucket_calls, whose length alone the rules read, has a trigger
-- of its own, below). The counters an outcome writes are domains with their own rule. Each
-- rule is the former constraint's, under its name: a NULL passes, as in a CHECK constraint.
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

-- Which namespaces each application role may use ('*': all of them). The functions check it
-- for the session's login role; `pg-setup --app-role ROLE --namespace NS` writes it. Grants
-- follow the role's OID, not its name: a renamed role keeps them, and a new role given an
-- old name gets none (role_name is the name at the time of the grant, for people to read).
CREATE TABLE @extschema@.rc_namespace_grants (
    role_name  name          NOT NULL,
    namespace  varchar(255)  NOT NULL,
    granted_at timestamptz   NOT NULL DEFAULT now(),
    role_oid   oid           NOT NULL,
    CONSTRAINT rc_namespace_grants_pkey PRIMARY KEY (role_oid, namespace),
    CONSTRAINT rc_namespace_grants_namespace_check
        CHECK (char_length(namespace) BETWEEN 1 AND 255)
);

-- True when the session's login role administers every namespace: it owns the breaker objects,
-- is a member of their owner, or is a superuser. session_user, because inside a SECURITY
-- DEFINER function current_user is always the owner.
CREATE OR REPLACE FUNCTION @extschema@.rc_session_is_owner()
RETURNS boolean
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(session_user, current_user, 'MEMBER')
$$;

-- Raises insufficient_privilege unless the session's login role may use p_namespace.
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

-- Durations are bounded so that no later call can overflow a timestamp, and month-bearing
-- intervals are refused because a month has no fixed length (the Python side uses seconds).
CREATE OR REPLACE FUNCTION @extschema@.rc_check_duration(
    p_name text,
    p_value interval,
    p_zero_allowed boolean
)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_value IS NULL OR extract(year FROM p_value) <> 0 OR extract(month FROM p_value) <> 0
       OR p_value > interval '365 days'
       OR (p_zero_allowed AND p_value < interval '0')
       OR (NOT p_zero_allowed AND p_value <= interval '0') THEN
        RAISE EXCEPTION 'rc: % must be % and at most 365 days, in days, hours, minutes or '
            'seconds (no months or years), got %', p_name,
            CASE WHEN p_zero_allowed THEN '>= 0' ELSE '> 0' END,
            coalesce(p_value::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

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

-- Raises the error for a bad key or namespace. Callers test the cheap condition inline and
-- call this only when it fails, so a valid call pays no extra function call.
CREATE OR REPLACE FUNCTION @extschema@.rc_check_names(p_key text, p_namespace text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_key IS NULL OR char_length(p_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_key must be 1 to 255 characters long, got %',
            coalesce(char_length(p_key) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_namespace IS NULL OR char_length(p_namespace) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got %',
            coalesce(char_length(p_namespace) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

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

CREATE OR REPLACE FUNCTION @extschema@.rc_record_runs_at(
    p_key text,
    p_namespace text,
    p_counts integer[],
    p_successes boolean[],
    p_generations bigint[],
    p_now timestamptz
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _runs integer := coalesce(cardinality(p_counts), 0);
    _total bigint;
    _generation bigint;
BEGIN
    IF p_counts IS NULL OR array_ndims(p_counts) > 1
       OR EXISTS (SELECT 1 FROM unnest(p_counts) AS c(n) WHERE c.n IS NULL OR c.n < 1)
       OR p_successes IS NULL OR array_ndims(p_successes) > 1
       OR cardinality(p_successes) <> _runs OR array_position(p_successes, NULL) IS NOT NULL
       OR (p_generations IS NOT NULL
           AND (array_ndims(p_generations) > 1 OR cardinality(p_generations) <> _runs)) THEN
        RAISE EXCEPTION 'rc: p_counts must hold one count >= 1 per run, p_successes one '
            'true/false per run and p_generations NULL or one generation (or NULL) per run, '
            'got %, % and %', coalesce(p_counts::text, 'NULL'),
            coalesce(p_successes::text, 'NULL'), coalesce(p_generations::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A run costs the same whatever its length: without a bound, a few thousand calls could
    -- carry the lifetime counters past bigint, and every later outcome would then fail.
    SELECT sum(c.n) INTO _total FROM unnest(p_counts) AS c(n);
    IF _total > 1000000000 THEN
        RAISE EXCEPTION 'rc: p_counts must add up to at most 1000000000 outcomes, got %', _total
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A healthy breaker's batch is one run of successes of its current generation, which
    -- cannot move it: on a count window with no slow calls counted it only shifts the
    -- window and the counters, in one UPDATE whatever the run's length, as
    -- rc_record_many_at's healthy-batch path would. Anything else (or a row that does not
    -- qualify, or does not exist) takes rc_record_many_at with the runs spelled out.
    _generation := p_generations[array_lower(p_generations, 1)];
    IF _runs > 0 AND array_position(p_successes, false) IS NULL
       AND (p_generations IS NULL
            OR (array_position(p_generations, NULL) IS NULL
                AND _generation = ALL (p_generations))) THEN
        UPDATE @extschema@.rc_circuit_breakers AS b
        SET execution_log = b.execution_log[cardinality(b.execution_log)
                                            - (b.window_size - least(_total, b.window_size)) + 1 :]
                            || array_fill(true, ARRAY[least(_total, b.window_size)::integer]),
            slow_log = '{}',
            failure_count = 0,
            successes = b.successes + _total,
            updated_at = coalesce(p_now, clock_timestamp())
        WHERE b.resource_key = p_key AND b.namespace = p_namespace
          AND b.state = 'CLOSED' AND b.window_duration IS NULL
          AND b.slow_call_duration IS NULL
          AND (_generation IS NULL OR _generation = b.generation)
        RETURNING b.state, b.generation INTO state, generation;
        IF FOUND THEN
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    SELECT * FROM @extschema@.rc_record_many_at(
        p_key, p_namespace,
        ARRAY(SELECT r.ok
              FROM unnest(p_counts, p_successes) WITH ORDINALITY AS r(n, ok, i),
                   generate_series(1, r.n) AS s(k)
              ORDER BY r.i, s.k),
        CASE WHEN p_generations IS NOT NULL THEN
            ARRAY(SELECT r.gen
                  FROM unnest(p_counts, p_generations) WITH ORDINALITY AS r(n, gen, i),
                       generate_series(1, r.n) AS s(k)
                  ORDER BY r.i, s.k)
        END,
        p_now);
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
            quote_nullable(left(p_state, 40))
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
        -- Changing a breaker nobody created is most likely a typo: say so, create nothing.
        RAISE EXCEPTION 'rc: no breaker % in namespace %', quote_literal(p_key),
            quote_literal(p_namespace)
            USING ERRCODE = 'no_data_found',
                  HINT = 'rc_force and rc_reset change an existing breaker; rc_configure '
                         '(or any call) creates one.';
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
        -- Changing a breaker nobody created is most likely a typo: say so, create nothing.
        RAISE EXCEPTION 'rc: no breaker % in namespace %', quote_literal(p_key),
            quote_literal(p_namespace)
            USING ERRCODE = 'no_data_found',
                  HINT = 'rc_force and rc_reset change an existing breaker; rc_configure '
                         '(or any call) creates one.';
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
    p_failure_limit_num bigint DEFAULT 1,
    p_failure_limit_den bigint DEFAULT 1,
    p_window_size bigint DEFAULT NULL,
    p_success_limit_num bigint DEFAULT NULL,
    p_success_limit_den bigint DEFAULT NULL,
    p_cooldown interval DEFAULT '0',
    p_half_open_timeout interval DEFAULT '10 seconds',
    p_window_duration interval DEFAULT NULL,
    p_minimum_calls bigint DEFAULT NULL,
    p_slow_call_duration interval DEFAULT NULL,
    p_slow_call_limit_num bigint DEFAULT NULL,
    p_slow_call_limit_den bigint DEFAULT NULL,
    p_cooldown_factor double precision DEFAULT 1,
    p_max_cooldown interval DEFAULT NULL,
    p_restore boolean DEFAULT false
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    -- The parameters are bigint so that a caller passing a wider number gets a 22023 naming
    -- it rather than "function does not exist"; what is stored must fit int4.
    _fnum bigint := p_failure_limit_num;
    _fden bigint := p_failure_limit_den;
    _snum bigint := p_success_limit_num;
    _sden bigint := p_success_limit_den;
    _lnum bigint := p_slow_call_limit_num;
    _lden bigint := p_slow_call_limit_den;
    _gcd bigint;
    _window bigint;
    _size integer;
    _len integer;
    _fresh boolean;
    _unnegatable text;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    IF p_restore IS NULL THEN
        RAISE EXCEPTION 'rc: p_restore must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A fraction's sign moves to its numerator: the one bigint whose negation overflows is
    -- refused first, by name.
    _unnegatable := CASE -9223372036854775808
        WHEN p_failure_limit_num THEN 'p_failure_limit_num'
        WHEN p_failure_limit_den THEN 'p_failure_limit_den'
        WHEN p_success_limit_num THEN 'p_success_limit_num'
        WHEN p_success_limit_den THEN 'p_success_limit_den'
        WHEN p_slow_call_limit_num THEN 'p_slow_call_limit_num'
        WHEN p_slow_call_limit_den THEN 'p_slow_call_limit_den' END;
    IF _unnegatable IS NOT NULL THEN
        RAISE EXCEPTION 'rc: % must be part of a fraction in (0, 1], got -9223372036854775808',
            _unnegatable
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

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
    IF _fden > 2147483647 THEN
        RAISE EXCEPTION 'rc: p_failure_limit_num/p_failure_limit_den must have a reduced '
            'denominator of at most 2147483647, got %/%', _fnum, _fden
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

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
    IF p_minimum_calls < 1 OR p_minimum_calls > 2147483647
       OR (p_window_duration IS NULL AND p_minimum_calls > _window) THEN
        RAISE EXCEPTION 'rc: p_minimum_calls must be between 1 and 2147483647 and, with a count '
            'window, at most p_window_size (%), got %', _window, p_minimum_calls
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
        IF _lden > 2147483647 THEN
            RAISE EXCEPTION 'rc: p_slow_call_limit_num/p_slow_call_limit_den must have a '
                'reduced denominator of at most 2147483647, got %/%', _lnum, _lden
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
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

    -- A restore follows an announcement that the row was forgotten, which any role can forge:
    -- it stores only into a row made anew without a configuration (by an outcome or
    -- rc_set_state; the columns' defaults), never over one someone stored. Processes that
    -- disagree on the configuration would otherwise take turns replacing it at each forgery,
    -- and a change of window kind or duration empties the window, so the breaker never trips.
    IF p_restore
       AND (_row.failure_limit_num, _row.failure_limit_den, _row.window_size,
            _row.success_limit_num, _row.success_limit_den, _row.cooldown, _row.half_open_timeout,
            _row.window_duration, _row.minimum_calls, _row.slow_call_duration,
            _row.slow_call_limit_num, _row.slow_call_limit_den, _row.cooldown_factor,
            _row.max_cooldown)
           IS DISTINCT FROM
           (1, 1, 1, NULL::integer, NULL::integer, interval '0', interval '10 seconds',
            NULL::interval, NULL::integer, NULL::interval, NULL::integer, NULL::integer,
            1::double precision, NULL::interval) THEN
        state := _row.state;
        generation := _row.generation;
        RETURN NEXT;
        RETURN;
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
    -- PL/pgSQL prepares each expression it evaluates anew in every transaction, so a call
    -- tests as few as it can. One test passes the owner's valid call; any other role goes
    -- through rc_check_namespace and its grants, and a bad key through rc_check_names.
    IF (char_length(p_key) BETWEEN 1 AND 255 AND char_length(p_namespace) BETWEEN 1 AND 255
        AND pg_has_role(session_user, current_user, 'MEMBER')) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_namespace(p_namespace);
        IF (char_length(p_key) BETWEEN 1 AND 255 AND p_namespace IS NOT NULL) IS NOT TRUE THEN
            PERFORM @extschema@.rc_check_names(p_key, p_namespace);
        END IF;
    END IF;
    -- The verdicts that need no lock are decided here rather than by rc_try_acquire_at: a
    -- nested call with a pinned search_path, and the query that returns its rows, cost more
    -- than the verdict. A CLOSED or DISABLED breaker admits, whatever concurrent calls do.
    SELECT b.state IN ('CLOSED', 'DISABLED'), b.state, b.generation, b.held, b.open_until,
           b.cooldown
    INTO permitted, state, generation, _held, _open_until, _cooldown
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace;
    IF permitted THEN
        RETURN NEXT;
        RETURN;
    END IF;
    IF state = 'OPEN' THEN
        -- Held OPEN has no end of cooldown: callers come back after one cooldown (>= 1 s).
        permitted := false;
        retry_after := CASE WHEN _held THEN greatest(_cooldown, interval '1 second')
                            ELSE _open_until - clock_timestamp() END;
        IF _held OR retry_after > interval '0' THEN
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    -- A breaker never used, HALF_OPEN, or OPEN with its cooldown over: the state machine.
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

CREATE OR REPLACE FUNCTION @extschema@.rc_record_runs(
    p_key text,
    p_namespace text,
    p_counts integer[],
    p_successes boolean[],
    p_generations bigint[] DEFAULT NULL
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
    SELECT * FROM @extschema@.rc_record_runs_at(p_key, p_namespace, p_counts, p_successes,
                                                p_generations, NULL);
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

CREATE OR REPLACE FUNCTION @extschema@.rc_reset(p_key text, p_namespace text DEFAULT 'default')
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY SELECT * FROM @extschema@.rc_reset_at(p_key, p_namespace, NULL);
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

-- 0.4.5's set_state: overwrite a breaker's state outright (an operator's repair), creating
-- the breaker if needed. A transition like any other: a new generation, announced.
CREATE OR REPLACE FUNCTION @extschema@.rc_set_state(
    p_key text,
    p_state text,
    p_failure_count integer,
    p_open_until timestamptz,
    p_execution_log boolean[],
    p_namespace text DEFAULT 'default'
)
RETURNS TABLE (state text, generation bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _row @extschema@.rc_circuit_breakers%ROWTYPE;
    _target text := upper(btrim(p_state));
    _log boolean[] := coalesce(p_execution_log, '{}');
    _size integer;
    _len integer;
    _now timestamptz;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    IF _target IS NULL OR _target NOT IN ('CLOSED', 'OPEN', 'HALF_OPEN', 'DISABLED') THEN
        RAISE EXCEPTION 'rc: p_state must be one of CLOSED, OPEN, HALF_OPEN, DISABLED, got %',
            quote_nullable(left(p_state, 40))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Bounded well below integer's maximum: each failure adds one, and an overflow would
    -- make every failure recorded afterwards an error.
    IF (p_failure_count BETWEEN 0 AND 1000000000) IS NOT TRUE THEN
        RAISE EXCEPTION 'rc: p_failure_count must be between 0 and 1000000000, got %',
            coalesce(p_failure_count::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_ndims(_log) > 1 OR array_position(_log, NULL) IS NOT NULL
       OR cardinality(_log) > 10000 THEN
        RAISE EXCEPTION 'rc: p_execution_log must hold at most 10000 true/false outcomes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO @extschema@.rc_circuit_breakers (resource_key, namespace)
    VALUES (p_key, p_namespace)
    ON CONFLICT DO NOTHING;
    SELECT * INTO _row
    FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    FOR UPDATE;
    _now := clock_timestamp();

    -- The window keeps the newest outcomes that fit the new phase.
    _size := CASE WHEN _target = 'HALF_OPEN' THEN coalesce(_row.success_limit_den, _row.window_size)
                  ELSE _row.window_size END;
    _len := cardinality(_log);
    IF _len > _size THEN
        _log := _log[_len - _size + 1 : _len];
    END IF;
    UPDATE @extschema@.rc_circuit_breakers AS b
    SET state = _target,
        generation = _row.generation + 1,
        failure_count = p_failure_count,
        -- Finite: -infinity (now) would make every reader's open_until - now() fail.
        open_until = CASE WHEN _target = 'OPEN'
                          THEN least(CASE WHEN p_open_until = '-infinity' THEN _now
                                          ELSE coalesce(p_open_until, _now) END,
                                     _now + interval '365 days') END,
        execution_log = _log,
        permits = '{}',
        slow_log = '{}',
        held = _target = 'DISABLED',
        last_cooldown = interval '0',
        window_start = NULL,
        bucket_head = 0,
        bucket_calls = '{}',
        bucket_failures = '{}',
        bucket_slow = '{}',
        updated_at = _now
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    RETURNING b.open_until INTO _row.open_until;
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _row.state, _target,
                                 _row.generation + 1, _row.open_until);
    state := _target;
    generation := _row.generation + 1;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_status(p_key text, p_namespace text DEFAULT 'default')
RETURNS SETOF @extschema@.rc_circuit_breaker_status
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    RETURN QUERY
    SELECT * FROM @extschema@.rc_circuit_breaker_status AS s
    WHERE s.resource_key = p_key AND s.namespace = p_namespace;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_forget(p_key text, p_namespace text DEFAULT 'default')
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _state text;
BEGIN
    IF (char_length(p_key) BETWEEN 1 AND 255
        AND char_length(p_namespace) BETWEEN 1 AND 255) IS NOT TRUE THEN
        PERFORM @extschema@.rc_check_names(p_key, p_namespace);
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);
    DELETE FROM @extschema@.rc_circuit_breakers AS b
    WHERE b.resource_key = p_key AND b.namespace = p_namespace
    RETURNING b.state INTO _state;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Processes that cached this breaker must drop what they hold: it starts over as a fresh
    -- CLOSED breaker with the default configuration.
    PERFORM @extschema@.rc_notify_transition(p_key, p_namespace, _state, 'CLOSED', 0, NULL);
    RETURN true;
END;
$$;

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

-- Retry budgets are forgotten, collected and listed like breakers (their table is created
-- with the rest of the retry budget below: these PL/pgSQL bodies find it when they run).
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

COMMENT ON TABLE @extschema@.rc_circuit_breakers IS
    'One row per circuit breaker (resource_key, namespace). Change it only through the rc_* '
    'functions, which run the state machine under a row lock.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.resource_key IS
    'The protected resource''s name (1 to 255 characters).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.namespace IS
    'Isolates groups of breakers (applications, environments, test runs).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.state IS
    'CLOSED (calls pass), OPEN (calls rejected until open_until, or held), HALF_OPEN '
    '(trial calls) or DISABLED (every call passes, nothing trips).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.failure_count IS
    'Consecutive failures recorded in the current phase.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.open_until IS
    'While OPEN: when the cooldown ends and the next call becomes a half-open trial.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.execution_log IS
    'The current phase''s window of outcomes, oldest first (true = success). OPEN keeps the '
    'window that tripped it.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.created_at IS
    'When the row was created.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.updated_at IS
    'When the row last changed.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.generation IS
    'Incremented by every transition; outcomes carrying an older generation only count in '
    'successes/failures.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.permits IS
    'While HALF_OPEN: expiry times of trial calls admitted and not yet recorded, oldest first.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.successes IS
    'Successes ever recorded (every rc_record call, counted or not).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.failures IS
    'Failures ever recorded (every rc_record call, counted or not).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.failure_limit_num IS
    'Failure limit numerator: trip when failures/window_size reaches the limit (reduced).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.failure_limit_den IS
    'Failure limit denominator (reduced).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.window_size IS
    'Outcomes a CLOSED breaker judges (by default the failure limit''s denominator).';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.success_limit_num IS
    'Success limit numerator, or NULL: a half-open phase closes when successes/success_limit_den '
    'reaches it; without it the failure limit decides over window_size outcomes.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.success_limit_den IS
    'Success limit denominator (reduced): the number of outcomes a half-open phase judges.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.cooldown IS
    'How long the breaker stays OPEN before admitting a trial call.';
COMMENT ON COLUMN @extschema@.rc_circuit_breakers.half_open_timeout IS
    'How long a trial permit is held for a call that never records its outcome.';

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

COMMENT ON VIEW @extschema@.rc_circuit_breaker_status IS
    'Every breaker of the namespaces the session''s login role may use, in readable form: '
    'execution_log as S/F (oldest first), time left in the cooldown, live trial permits, '
    'limits as fractions.';

COMMENT ON FUNCTION @extschema@.rc_try_acquire(text, text) IS
    'May a call run now? Returns permitted, the state and generation after the call, and '
    'retry_after when rejected. Uses the server clock.';
COMMENT ON FUNCTION @extschema@.rc_record(text, boolean, text, bigint, interval) IS
    'Records one call''s outcome. Pass the generation rc_try_acquire returned so that an '
    'outcome from before a transition only counts in the lifetime counters, and the '
    'call''s duration so that a slow call counts as one.';
COMMENT ON FUNCTION @extschema@.rc_record_many(text, text, boolean[], bigint[], interval[]) IS
    'Records several outcomes in order, exactly as that many rc_record calls would, under one '
    'row lock.';
COMMENT ON FUNCTION @extschema@.rc_record_runs(text, text, integer[], boolean[], bigint[]) IS
    'Records outcomes given as runs, in order: p_counts[i] outcomes of success '
    'p_successes[i] from generation p_generations[i] (NULL: any), exactly as rc_record_many '
    'would record them spelled out. A run of successes of the current generation costs the '
    'same whatever its length.';
COMMENT ON FUNCTION @extschema@.rc_configure(text, text, bigint, bigint, bigint, bigint, bigint, interval, interval,
    interval, bigint, interval, bigint, bigint, double precision, interval, boolean) IS
    'Stores a breaker''s configuration. Limits are fractions in (0, 1]; the window defaults to '
    'the failure limit''s denominator, or is a time window of p_window_duration; '
    'p_minimum_calls outcomes are needed before a trip; calls longer than '
    'p_slow_call_duration are slow; each reopening multiplies the cooldown by '
    'p_cooldown_factor up to p_max_cooldown. Keys never configured use failure limit 1/1, '
    'cooldown 0. With p_restore, the configuration is stored only into a row that is missing '
    'or holds no stored configuration (made anew by an outcome after rc_forget or rc_gc).';
COMMENT ON FUNCTION @extschema@.rc_force(text, text, text, boolean) IS
    'Forces a transition: OPEN for one cooldown (held OPEN with p_hold), DISABLED (every '
    'call permitted, nothing trips, until the next force or reset), or a fresh CLOSED or '
    'HALF_OPEN phase. A breaker that does not exist raises no_data_found (P0002).';
COMMENT ON FUNCTION @extschema@.rc_release(text, text, bigint) IS
    'A call whose outcome is not counted ended: gives back the half-open trial permit it '
    'held (pass the generation rc_try_acquire returned). Counts nothing.';
COMMENT ON FUNCTION @extschema@.rc_reset(text, text) IS
    'Back to a fresh CLOSED breaker with zeroed counters; the configuration stays. A breaker '
    'that does not exist raises no_data_found (P0002).';
COMMENT ON FUNCTION @extschema@.rc_set_state(text, text, integer, timestamptz, boolean[], text) IS
    'Overwrites a breaker''s state (0.4.5''s set_state), creating it if needed: a new '
    'generation, announced like any transition. open_until counts only for OPEN.';
COMMENT ON FUNCTION @extschema@.rc_status(text, text) IS
    'The rc_circuit_breaker_status row of one breaker (no row if it was never used).';
COMMENT ON FUNCTION @extschema@.rc_try_acquire_at(text, text, timestamptz) IS
    'rc_try_acquire at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_record_at(text, boolean, text, bigint, timestamptz, interval) IS
    'rc_record at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_record_many_at(text, text, boolean[], bigint[], timestamptz, interval[]) IS
    'rc_record_many at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_record_runs_at(text, text, integer[], boolean[], bigint[], timestamptz) IS
    'rc_record_runs at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_force_at(text, text, text, timestamptz, boolean) IS
    'rc_force at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_reset_at(text, text, timestamptz) IS
    'rc_reset at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_release_at(text, text, bigint, timestamptz) IS
    'rc_release at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_forget(text, text) IS
    'Deletes one breaker (true if it existed); its next use starts a fresh default one.';
COMMENT ON FUNCTION @extschema@.rc_gc(interval) IS
    'Deletes the CLOSED breakers of the caller''s namespaces not changed for p_idle, and the '
    'retry budgets not used for p_idle; returns how many breakers.';
COMMENT ON FUNCTION @extschema@.rc_session_is_owner() IS
    'True when the session''s login role owns the breaker objects (or is a member of their '
    'owner, or a superuser) and so may use every namespace.';
COMMENT ON FUNCTION @extschema@.rc_check_breaker_row() IS
    'Trigger of rc_circuit_breakers: refuses a row that breaks a breaker''s rules '
    '(check_violation, naming the rule), on insert and on each update of a column they read.';
COMMENT ON FUNCTION @extschema@.rc_check_namespace(text) IS
    'Raises insufficient_privilege unless the session''s login role may use the namespace.';
COMMENT ON FUNCTION @extschema@.rc_check_duration(text, interval, boolean) IS
    'Raises invalid_parameter_value for a duration that is NULL, negative (or zero when not '
    'allowed), over 365 days, or holds months or years.';
COMMENT ON TABLE @extschema@.rc_namespace_grants IS
    'The namespaces each application role (by OID) may use (''*'': all); written by '
    'pg-setup for its application role and namespace options.';
COMMENT ON FUNCTION @extschema@.rc_check_names(text, text) IS
    'Raises invalid_parameter_value for a NULL, empty or over-long key or namespace.';
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
COMMENT ON FUNCTION @extschema@.rc_listen(text) IS
    'LISTENs on p_namespace''s channel and returns it, so that the channel never appears in a '
    'statement''s text; insufficient_privilege unless the session''s login role may use the '
    'namespace.';
COMMENT ON FUNCTION @extschema@.rc_listen_all() IS
    'LISTENs on every channel rc_channels() gives the session and returns them (namespace, '
    'channel).';
COMMENT ON FUNCTION @extschema@.rc_relax_commit() IS
    'Lets the current transaction, if it has written nothing yet, commit without waiting for '
    'its WAL flush: for recorded outcomes; a transition undoes it.';

-- Nothing is executable by default; `pg-setup --app-role` grants the public functions.
REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_check_names(text, text),
    @extschema@.rc_relax_commit(),
    @extschema@.rc_notify_transition(text, text, text, text, bigint, timestamptz),
    @extschema@.rc_notify_channel(text),
    @extschema@.rc_channel(text),
    @extschema@.rc_channels(),
    @extschema@.rc_listen(text),
    @extschema@.rc_listen_all(),
    @extschema@.rc_try_acquire_at(text, text, timestamptz),
    @extschema@.rc_record_many_at(text, text, boolean[], bigint[], timestamptz, interval[]),
    @extschema@.rc_record_runs_at(text, text, integer[], boolean[], bigint[], timestamptz),
    @extschema@.rc_record_at(text, boolean, text, bigint, timestamptz, interval),
    @extschema@.rc_force_at(text, text, text, timestamptz, boolean),
    @extschema@.rc_reset_at(text, text, timestamptz),
    @extschema@.rc_release_at(text, text, bigint, timestamptz),
    @extschema@.rc_configure(text, text, bigint, bigint, bigint, bigint, bigint, interval, interval,
    interval, bigint, interval, bigint, bigint, double precision, interval, boolean),
    @extschema@.rc_try_acquire(text, text),
    @extschema@.rc_record(text, boolean, text, bigint, interval),
    @extschema@.rc_record_many(text, text, boolean[], bigint[], interval[]),
    @extschema@.rc_record_runs(text, text, integer[], boolean[], bigint[]),
    @extschema@.rc_force(text, text, text, boolean),
    @extschema@.rc_reset(text, text),
    @extschema@.rc_set_state(text, text, integer, timestamptz, boolean[], text),
    @extschema@.rc_release(text, text, bigint),
    @extschema@.rc_status(text, text),
    @extschema@.rc_forget(text, text),
    @extschema@.rc_gc(interval),
    @extschema@.rc_session_is_owner(),
    @extschema@.rc_check_namespace(text),
    @extschema@.rc_check_duration(text, interval, boolean),
    @extschema@.rc_check_breaker_row()
FROM PUBLIC;

-- ==== retry budget: a token bucket per (namespace, name), shared by the whole fleet ======
--
-- Each first attempt deposits `ratio` tokens, each retry withdraws one; on top of that the
-- bucket refills by itself up to `min_per_second` tokens at `min_per_second` per second (the
-- floor), and every token decays with a 10-second time constant, so a long healthy period
-- cannot bank a retry storm. Retries across the fleet thus stay within ratio x first
-- attempts + min_per_second x (seconds + 1). Clients batch their deposits and pass the
-- configuration with each call (the last one wins, as with breakers).
--
-- Like every other function, these pin search_path to pg_catalog, pg_temp and name our own
-- objects @extschema@.name (the installer fills in the schema), and a role may only use the
-- namespaces pg-setup granted it.

CREATE TABLE @extschema@.rc_retry_budgets (
    name            varchar(255)     NOT NULL,
    namespace       varchar(255)     NOT NULL DEFAULT 'default',
    balance         double precision NOT NULL,
    min_per_second  double precision NOT NULL,
    first_attempts  bigint           NOT NULL DEFAULT 0,
    retries         bigint           NOT NULL DEFAULT 0,
    refusals        bigint           NOT NULL DEFAULT 0,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT rc_retry_budgets_pkey PRIMARY KEY (name, namespace)
);

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_settle_at(
    p_name text,
    p_namespace text,
    p_first_attempts bigint,
    p_ratio double precision,
    p_min_per_second double precision,
    p_withdraw boolean,
    p_now timestamptz
)
RETURNS TABLE (permitted boolean, balance double precision)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_balance double precision;
    v_then timestamptz;
    v_elapsed double precision;
    v_permitted boolean;
BEGIN
    IF p_name IS NULL OR char_length(p_name) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_name must be 1 to 255 characters long, got %',
            coalesce(char_length(p_name) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_namespace IS NULL OR char_length(p_namespace) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'rc: p_namespace must be 1 to 255 characters long, got %',
            coalesce(char_length(p_namespace) || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Bounded per call, and the counters below saturate: no value a caller passes can make
    -- a later deposit overflow (which would cut every process off the shared budget).
    IF p_first_attempts IS NULL OR p_first_attempts < 0 OR p_first_attempts > 1000000000 THEN
        RAISE EXCEPTION 'rc: p_first_attempts must be in [0, 1000000000], got %',
            coalesce(p_first_attempts::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- NaN sorts above every number in PostgreSQL, so the upper bounds refuse it too.
    IF p_ratio IS NULL OR NOT (p_ratio >= 0 AND p_ratio <= 1000) THEN
        RAISE EXCEPTION 'rc: p_ratio must be in [0, 1000], got %', coalesce(p_ratio::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_min_per_second IS NULL OR NOT (p_min_per_second >= 0 AND p_min_per_second <= 1000000)
    THEN
        RAISE EXCEPTION 'rc: p_min_per_second must be in [0, 1000000], got %',
            coalesce(p_min_per_second::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_withdraw IS NULL THEN
        RAISE EXCEPTION 'rc: p_withdraw must be true or false, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @extschema@.rc_check_namespace(p_namespace);

    -- A new budget starts with one second of floor, so a process's first retries are not
    -- refused just because no deposit has been flushed yet.
    INSERT INTO @extschema@.rc_retry_budgets AS b
        (name, namespace, balance, min_per_second, created_at, updated_at)
    VALUES (p_name, p_namespace, p_min_per_second, p_min_per_second, v_now, v_now)
    ON CONFLICT (name, namespace) DO NOTHING;
    SELECT b.balance, b.updated_at INTO v_balance, v_then
    FROM @extschema@.rc_retry_budgets AS b
    WHERE b.name = p_name AND b.namespace = p_namespace
    FOR UPDATE;

    -- Clocks of different callers (and explicit p_now) may go backwards: no time passed.
    v_elapsed := greatest(0, extract(epoch FROM v_now - v_then)::double precision);
    IF v_elapsed > 0 THEN
        -- exp() raises on underflow: after 10 minutes nothing is left anyway.
        v_balance := CASE WHEN v_elapsed >= 600 THEN 0
                          ELSE v_balance * exp(-v_elapsed / 10) END;
        IF v_balance < p_min_per_second THEN
            v_balance := least(p_min_per_second, v_balance + p_min_per_second * v_elapsed);
        END IF;
    END IF;
    v_balance := v_balance + p_first_attempts * p_ratio;
    -- Tolerates the rounding of adding up fractional deposits (5 x 0.2 is a whole token).
    v_permitted := p_withdraw AND v_balance >= 1 - 1e-9;
    IF v_permitted THEN
        v_balance := greatest(0, v_balance - 1);
    END IF;

    UPDATE @extschema@.rc_retry_budgets AS b
    SET balance = v_balance,
        min_per_second = p_min_per_second,
        first_attempts = b.first_attempts
            + least(p_first_attempts, 9223372036854775807 - b.first_attempts),
        retries = b.retries + least(v_permitted::integer, 9223372036854775807 - b.retries),
        refusals = b.refusals
            + least((p_withdraw AND NOT v_permitted)::integer, 9223372036854775807 - b.refusals),
        updated_at = greatest(v_then, v_now)
    WHERE b.name = p_name AND b.namespace = p_namespace;

    permitted := v_permitted;
    balance := v_balance;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_deposit(
    p_name text,
    p_namespace text DEFAULT 'default',
    p_first_attempts bigint DEFAULT 1,
    p_ratio double precision DEFAULT 0.2,
    p_min_per_second double precision DEFAULT 10
)
RETURNS double precision
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.balance FROM @extschema@.rc_budget_settle_at(
        p_name, p_namespace, p_first_attempts, p_ratio, p_min_per_second, false, NULL) AS s;
$$;

CREATE OR REPLACE FUNCTION @extschema@.rc_budget_withdraw(
    p_name text,
    p_namespace text DEFAULT 'default',
    p_min_per_second double precision DEFAULT 10,
    p_first_attempts bigint DEFAULT 0,
    p_ratio double precision DEFAULT 0.2
)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.permitted FROM @extschema@.rc_budget_settle_at(
        p_name, p_namespace, p_first_attempts, p_ratio, p_min_per_second, true, NULL) AS s;
$$;

COMMENT ON TABLE @extschema@.rc_retry_budgets IS
    'Fleet-wide retry budgets: a token bucket per (namespace, name), changed only by the '
    'budget deposit and withdraw functions.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.balance IS
    'Tokens left when updated_at was written; one token pays for one retry.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.min_per_second IS
    'The floor: the bucket refills by itself up to this many tokens, at this many per second.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.first_attempts IS
    'First attempts ever deposited.';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.retries IS
    'Withdrawals granted (retries made).';
COMMENT ON COLUMN @extschema@.rc_retry_budgets.refusals IS
    'Withdrawals refused (retries not made).';
COMMENT ON FUNCTION @extschema@.rc_budget_settle_at(
    text, text, bigint, double precision, double precision, boolean, timestamptz) IS
    'Deposits p_first_attempts x p_ratio tokens and, with p_withdraw, takes one for a retry, '
    'at an explicit time (NULL: the server clock once the row is locked).';
COMMENT ON FUNCTION @extschema@.rc_budget_deposit(
    text, text, bigint, double precision, double precision) IS
    'Deposits p_first_attempts x p_ratio tokens (a batch of first attempts); returns the balance.';
COMMENT ON FUNCTION @extschema@.rc_budget_withdraw(
    text, text, double precision, bigint, double precision) IS
    'May a retry happen now? Takes one token if so; can carry a batch of deposits along.';

-- Nothing is executable by default; `pg-setup --app-role` grants the public functions.
REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_budget_settle_at(text, text, bigint, double precision, double precision,
                                    boolean, timestamptz),
    @extschema@.rc_budget_deposit(text, text, bigint, double precision, double precision),
    @extschema@.rc_budget_withdraw(text, text, double precision, bigint, double precision)
FROM PUBLIC;
-- ==== end of retry budget ================================================================
