-- A record's replaced versions are its history, which answers cite. Until now the app role could
-- write that history directly (0026 granted it INSERT and DELETE, the trigger running as the
-- writer), and steer what the trigger kept through app.records' own version and timestamps.
-- From here:
-- 1. Only the update trigger writes versions: it runs as the owner (SECURITY DEFINER, with the
--    fixed search_path it already had), which forced RLS still confines to the tenant the
--    transaction names, and the app role keeps SELECT alone. Versions go only with their record
--    or dataset (the foreign key's cascade, which runs as the table's owner) or past a record's
--    last 100 (the trigger's prune).
-- 2. What the trigger copies follows the record's real changes: a new record starts at version 1
--    stamped with its transaction's time; an update moves the version by exactly one when the
--    data changes and not at all otherwise, stamps updated_at with the changing transaction's
--    time (and leaves it otherwise), and changes neither created_at nor the record's key or
--    dataset. Without this, `SET version = version + 101` would have the prune erase a record's
--    history in one statement, a rename could hand a record's history to another one, and any
--    version number or time could be written, by insert or update, for the trigger to keep.
--    Each rule is the WHEN of a row trigger, evaluated per row without a function call; the
--    function only refuses (SQLSTATE 23514). (Moving a record to another tenant stays RLS's to
--    refuse. What the app role can still do is what a tenant may: delete a record, which takes
--    its history, or change it 101 times, past the last 100 kept.)
-- Maintenance that updates records' data must now set app.tenant_id as a request does (the
-- keeping trigger writes under RLS) and step versions as above; slot-only backfills change
-- nothing here.
SET LOCAL ROLE tenantry_owner;

-- The same body as 0026's, as the owner, with the prune behind a test of the new rows: it ran
-- for every update, and where the table's statistics said it was empty (a young database, or
-- one whose rows had been rolled back) its plan was a sequential scan of the whole table,
-- measured at 150-300 ms per 500-record update against 4.5 ms (BENCHMARKS.md).
CREATE OR REPLACE FUNCTION app.keep_record_versions()
  RETURNS trigger
  LANGUAGE plpgsql
  SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    INSERT INTO app.record_versions (tenant_id, dataset_id, key, version, data, written_at)
    SELECT o.tenant_id, o.dataset_id, o.key, o.version, o.data, o.updated_at
    FROM old_records o
    WHERE (o.tenant_id, o.dataset_id, o.key, o.version) NOT IN
          (SELECT n.tenant_id, n.dataset_id, n.key, n.version FROM new_records n);
    IF EXISTS (SELECT 1 FROM new_records n WHERE n.version > 101) THEN
      DELETE FROM app.record_versions v
      USING new_records n
      WHERE n.version > 101
        AND v.tenant_id = n.tenant_id AND v.dataset_id = n.dataset_id AND v.key = n.key
        AND v.version < n.version - 100;
    END IF;
    RETURN NULL;
  END
  $$;
REVOKE INSERT, DELETE ON app.record_versions FROM tenantry_app;

CREATE FUNCTION app.refuse_record_version_change()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    RAISE EXCEPTION 'a record''s version starts at 1 and moves by one with each change of its data, stamped with the time of the change'
      USING ERRCODE = 'check_violation';
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.refuse_record_version_change() FROM PUBLIC;
CREATE TRIGGER records_version_steps BEFORE UPDATE ON app.records
  FOR EACH ROW
  WHEN (NEW.version IS DISTINCT FROM OLD.version + (OLD.data IS DISTINCT FROM NEW.data)::int
        OR NEW.created_at IS DISTINCT FROM OLD.created_at
        OR NEW.updated_at IS DISTINCT FROM
           CASE WHEN OLD.data IS DISTINCT FROM NEW.data THEN now() ELSE OLD.updated_at END
        OR NEW.key IS DISTINCT FROM OLD.key
        OR NEW.dataset_id IS DISTINCT FROM OLD.dataset_id)
  EXECUTE FUNCTION app.refuse_record_version_change();
CREATE TRIGGER records_version_starts BEFORE INSERT ON app.records
  FOR EACH ROW
  WHEN (NEW.version IS DISTINCT FROM 1
        OR NEW.created_at IS DISTINCT FROM now()
        OR NEW.updated_at IS DISTINCT FROM now())
  EXECUTE FUNCTION app.refuse_record_version_change();
