-- A record's replaced versions are its history, which answers cite. Until now the app role could
-- write that history directly (0026 granted it INSERT and DELETE, the trigger running as the
-- writer), and steer what the trigger kept through app.records' own version and timestamps.
-- From here:
-- 1. Only the update trigger writes versions: it runs as the owner (SECURITY DEFINER, with the
--    fixed search_path it already had), which forced RLS still confines to the tenant the
--    transaction names, and the app role keeps SELECT alone. Versions go only with their record
--    or dataset (the foreign key's cascade, which runs as the table's owner) or past a record's
--    last 100 (the trigger's prune).
-- 2. What the trigger copies is honest: an update of a record moves its version by exactly one
--    when its data changes and not at all otherwise, stamps updated_at with the changing
--    transaction's time (and leaves it otherwise), and never changes created_at. Without this,
--    `SET version = version + 101` would have the prune erase a record's history, and any
--    version number or time could be written for the trigger to keep. The rule is the WHEN of
--    a row trigger, evaluated per updated row without a function call; its function only
--    refuses (SQLSTATE 23514).
SET LOCAL ROLE tenantry_owner;

ALTER FUNCTION app.keep_record_versions() SECURITY DEFINER;
REVOKE INSERT, DELETE ON app.record_versions FROM tenantry_app;

CREATE FUNCTION app.refuse_record_version_change()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    RAISE EXCEPTION 'a record''s version moves by one with each change of its data, stamped with the time of the change'
      USING ERRCODE = 'check_violation';
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.refuse_record_version_change() FROM PUBLIC;
CREATE TRIGGER records_version_steps BEFORE UPDATE ON app.records
  FOR EACH ROW
  WHEN (NEW.version IS DISTINCT FROM OLD.version + (OLD.data IS DISTINCT FROM NEW.data)::int
        OR NEW.created_at IS DISTINCT FROM OLD.created_at
        OR NEW.updated_at IS DISTINCT FROM
           CASE WHEN OLD.data IS DISTINCT FROM NEW.data THEN now() ELSE OLD.updated_at END)
  EXECUTE FUNCTION app.refuse_record_version_change();
