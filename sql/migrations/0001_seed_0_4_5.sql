-- Version 1: the table that resilient_circuit 0.4.5's `pg-setup` created.
--
-- This file is history, not something to edit: databases set up by 0.4.5 already
-- hold exactly these objects, and later migrations upgrade from them.  The
-- installer never runs it on such a database (it recognises the table and records
-- version 1 as applied); it exists so that the upgrade path can be replayed from
-- scratch and compared with schema.sql.
--
-- Like every file in this folder it is schema-agnostic: the installer sets
-- search_path to the target schema before running it.

CREATE TABLE IF NOT EXISTS rc_circuit_breakers (
    resource_key VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL DEFAULT 'default',
    state VARCHAR(20) NOT NULL
        CONSTRAINT rc_circuit_breakers_state_check
        CHECK (state IN ('CLOSED', 'OPEN', 'HALF_OPEN')),
    failure_count INTEGER NOT NULL DEFAULT 0,
    open_until TIMESTAMPTZ,
    -- 0.4.5 kept the sliding window as a JSON array of booleans, newest last.
    execution_log JSONB NOT NULL DEFAULT '[]',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (resource_key, namespace)
);

CREATE OR REPLACE FUNCTION rc_update_updated_at()
RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$;

-- CREATE TRIGGER has no IF NOT EXISTS; dropping first keeps the file re-runnable.
DROP TRIGGER IF EXISTS rc_circuit_breakers_updated_at ON rc_circuit_breakers;
CREATE TRIGGER rc_circuit_breakers_updated_at
    BEFORE UPDATE ON rc_circuit_breakers
    FOR EACH ROW
    EXECUTE FUNCTION rc_update_updated_at();

CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_state
    ON rc_circuit_breakers (state);
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_namespace
    ON rc_circuit_breakers (namespace);
