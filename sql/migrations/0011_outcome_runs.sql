-- Version 11: batched outcomes travel as runs.
-- rc_record_runs records outcomes given as runs (a count, success or failure, and the
-- generation of each run), exactly as rc_record_many would record them spelled out. A
-- batch of a healthy breaker is one run of successes, which it applies in one UPDATE
-- whatever the run's length; the client sends three short arrays instead of two arrays of
-- one element per outcome. rc_record_many is unchanged.

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
        SELECT sum(c.n) INTO _total FROM unnest(p_counts) AS c(n);
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

COMMENT ON FUNCTION @extschema@.rc_record_runs(text, text, integer[], boolean[], bigint[]) IS
    'Records outcomes given as runs, in order: p_counts[i] outcomes of success '
    'p_successes[i] from generation p_generations[i] (NULL: any), exactly as rc_record_many '
    'would record them spelled out. A run of successes of the current generation costs the '
    'same whatever its length.';
COMMENT ON FUNCTION @extschema@.rc_record_runs_at(text, text, integer[], boolean[], bigint[], timestamptz) IS
    'rc_record_runs at an explicit time (NULL: the server clock once the row is locked).';

-- Nothing is executable by default; `pg-setup --app-role` grants the public functions.
REVOKE EXECUTE ON FUNCTION
    @extschema@.rc_record_runs_at(text, text, integer[], boolean[], bigint[], timestamptz),
    @extschema@.rc_record_runs(text, text, integer[], boolean[], bigint[])
FROM PUBLIC;
