-- Record history (the console opens the exact record version an answer cited, and shows a
-- record's versions): every update of a record keeps the version it replaces in
-- app.record_versions, written by a statement trigger in the same transaction, so every write
-- path (batch ingest, NDJSON import) keeps it and a rolled-back write keeps nothing. A record
-- keeps its last MAX_KEPT (100) replaced versions: the trigger deletes older ones as it adds.
-- A deleted record's versions go with it (the foreign key: whoever deletes a record expects its
-- contents gone), as do a dataset's. The current version stays in app.records; the storage
-- meter counts both. (A backfill that rewrites records without a content change, as 0016 did,
-- bumps no version and keeps nothing: the trigger keeps only rows whose version moved.)
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.record_versions (
  tenant_id     uuid NOT NULL,
  dataset_id    uuid NOT NULL,
  key           text NOT NULL,
  version       integer NOT NULL CHECK (version >= 1),
  data          jsonb NOT NULL,
  -- When this version was written (the record's updated_at then), and replaced.
  written_at    timestamptz NOT NULL,
  superseded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, dataset_id, key, version),
  FOREIGN KEY (tenant_id, dataset_id, key)
    REFERENCES app.records (tenant_id, dataset_id, key) ON DELETE CASCADE
);
ALTER TABLE app.record_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.record_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.record_versions FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
-- Versions are written and pruned by the trigger (as the writer), never changed.
GRANT SELECT, INSERT, DELETE ON app.record_versions TO tenantry_app;
-- A read-only support session reads them as it reads records.
GRANT SELECT ON app.record_versions TO tenantry_impersonation;
CREATE POLICY impersonation_live ON app.record_versions AS RESTRICTIVE FOR ALL
  TO tenantry_impersonation
  USING ((SELECT app.impersonation_live())) WITH CHECK ((SELECT app.impersonation_live()));

-- Invoker's rights: the writer's own role and RLS. Only rows whose version moved are kept (an
-- unchanged record is never updated): an old row whose (key, version) is not among the new rows.
-- NOT IN over the new rows is a hashed subplan; a join of the two transition tables (which have
-- no statistics) was planned as a nested loop and cost 28 ms per 500 updated records, against
-- 2 ms this way (BENCHMARKS.md, `record versions`). Then each updated record's versions older
-- than its last 100 go: a range of its primary key, looked up only for a record updated more
-- than 101 times.
CREATE FUNCTION app.keep_record_versions()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    INSERT INTO app.record_versions (tenant_id, dataset_id, key, version, data, written_at)
    SELECT o.tenant_id, o.dataset_id, o.key, o.version, o.data, o.updated_at
    FROM old_records o
    WHERE (o.tenant_id, o.dataset_id, o.key, o.version) NOT IN
          (SELECT n.tenant_id, n.dataset_id, n.key, n.version FROM new_records n);
    DELETE FROM app.record_versions v
    USING new_records n
    WHERE n.version > 101
      AND v.tenant_id = n.tenant_id AND v.dataset_id = n.dataset_id AND v.key = n.key
      AND v.version < n.version - 100;
    RETURN NULL;
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.keep_record_versions() FROM PUBLIC;
CREATE TRIGGER record_versions_kept AFTER UPDATE ON app.records
  REFERENCING OLD TABLE AS old_records NEW TABLE AS new_records
  FOR EACH STATEMENT EXECUTE FUNCTION app.keep_record_versions();
