-- Version 12: rc_record_runs records at most a billion outcomes per call.
--
--   * A run of outcomes costs the same whatever its length, so a caller could add up to
--     2^31 - 1 outcomes per run, as many runs as it likes, to a breaker's lifetime counters
--     in one call: a few thousand such calls would carry them past bigint, and every later
--     outcome of that breaker would fail. Runs adding up to more than 1000000000 outcomes are
--     refused (SQLSTATE 22023), leaving the row as it was.

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

