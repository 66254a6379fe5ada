-- Rollups: a dataset declares up to four (`datasets.rollups`, each a grain, hour or day, of its
-- time column and up to four dimensions: string, boolean or integer columns). Each keeps, per
-- bucket and per value of its dimensions, the record count and, for each integer or decimal
-- column (the first 16, in schema order), its count of values and their exact sum. Kept by the
-- statement that writes or deletes records (deltas from the rows' old and new images, RETURNING
-- OLD/NEW), so a rollup is never behind its records; read by the query compiler when a query can
-- be answered from one exactly (shared/src/analytics/query/rollup.rs).
--
-- Datasets that exist before this migration declare none ('[]'), and their queries keep reading
-- records: their rollups are not backfilled here.
SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.datasets
  ADD COLUMN rollups jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(rollups) = 'array'),
  -- Whether queries may read them: false while rollups given to a dataset that has records are
  -- being counted (rollup::enable); writers keep them either way.
  ADD COLUMN rollups_ready boolean NOT NULL DEFAULT true;

CREATE TABLE app.rollups (
  tenant_id  uuid NOT NULL,
  -- A key of its own: a group's key holds NULLs (no dimension value, no time), which a primary
  -- key cannot; the unique index below is the group's identity.
  id         bigint GENERATED ALWAYS AS IDENTITY,
  dataset_id uuid NOT NULL,
  -- Which of the dataset's rollups (1-based, in declared order).
  rollup     smallint NOT NULL CHECK (rollup BETWEEN 1 AND 4),
  -- date_bin('1 hour' or '1 day', time column, 2000-01-03 UTC); NULL for records without a time.
  bucket     timestamptz,
  -- The dimensions' values as text, in declared order (NULL: the record has none).
  g1 text, g2 text, g3 text, g4 text,
  n  bigint NOT NULL,
  c1 bigint, c2 bigint, c3 bigint, c4 bigint, c5 bigint, c6 bigint, c7 bigint, c8 bigint,
  c9 bigint, c10 bigint, c11 bigint, c12 bigint, c13 bigint, c14 bigint, c15 bigint, c16 bigint,
  s1 numeric, s2 numeric, s3 numeric, s4 numeric, s5 numeric, s6 numeric, s7 numeric, s8 numeric,
  s9 numeric, s10 numeric, s11 numeric, s12 numeric, s13 numeric, s14 numeric, s15 numeric, s16 numeric,
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, dataset_id) REFERENCES app.datasets (tenant_id, dataset_id) ON DELETE CASCADE
);
-- One row per group; NULL dimensions and buckets are values like any other here.
CREATE UNIQUE INDEX rollups_group ON app.rollups (tenant_id, dataset_id, rollup, bucket, g1, g2, g3, g4)
  NULLS NOT DISTINCT;

ALTER TABLE app.rollups ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.rollups FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.rollups FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT, UPDATE, DELETE ON app.rollups TO tenantry_app;

-- A read-only support session reads them as it reads records.
GRANT SELECT ON app.rollups TO tenantry_impersonation;
CREATE POLICY impersonation_live ON app.rollups AS RESTRICTIVE FOR ALL TO tenantry_impersonation
  USING ((SELECT app.impersonation_live())) WITH CHECK ((SELECT app.impersonation_live()));
