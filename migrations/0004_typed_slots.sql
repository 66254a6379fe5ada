-- Typed slots: the first columns of each type in a dataset's schema are also stored as real,
-- typed columns (s1.. for strings, n1.. numbers, i1.. integers, b1.. booleans, t1.. timestamps
-- other than the time column, which is `ts`). Queries read these instead of extracting and
-- casting JSON per row, which was most of their cost (see BENCHMARKS.md, analytics). `data`
-- stays the record as written: it is what reads return and what columns beyond the slots use.
-- Which column has which slot follows from the schema's column order (datasets are immutable).
--
-- The table is rebuilt rather than altered so that the fixed-width slots come first and `key`
-- and `data` last: a query deforms each row only as far as the last column it reads, and should
-- never have to walk past the JSON to reach a slot.
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.records_new (
  tenant_id  uuid NOT NULL,
  dataset_id uuid NOT NULL,
  ts         timestamptz,
  version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
  n1 float8, n2 float8, n3 float8, n4 float8, n5 float8, n6 float8, n7 float8, n8 float8, n9 float8, n10 float8, n11 float8, n12 float8, n13 float8, n14 float8, n15 float8, n16 float8,
  i1 int8, i2 int8, i3 int8, i4 int8, i5 int8, i6 int8, i7 int8, i8 int8,
  b1 boolean, b2 boolean, b3 boolean, b4 boolean, b5 boolean, b6 boolean, b7 boolean, b8 boolean,
  t1 timestamptz, t2 timestamptz, t3 timestamptz, t4 timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  s1 text, s2 text, s3 text, s4 text, s5 text, s6 text, s7 text, s8 text, s9 text, s10 text, s11 text, s12 text, s13 text, s14 text, s15 text, s16 text,
  key        text NOT NULL CHECK (length(key) BETWEEN 1 AND 256),
  data       jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object')
);

INSERT INTO app.records_new (tenant_id, dataset_id, ts, version, created_at, updated_at, key, data)
  SELECT tenant_id, dataset_id, ts, version, created_at, updated_at, key, data FROM app.records;

DROP TABLE app.records;
ALTER TABLE app.records_new RENAME TO records;

ALTER TABLE app.records
  ADD CONSTRAINT records_pkey PRIMARY KEY (tenant_id, dataset_id, key),
  ADD CONSTRAINT records_dataset_fkey FOREIGN KEY (tenant_id, dataset_id)
    REFERENCES app.datasets (tenant_id, dataset_id) ON DELETE CASCADE;
-- Per tenant and dataset, by time: time ranges and buckets.
CREATE INDEX records_by_time ON app.records (tenant_id, dataset_id, ts);

ALTER TABLE app.records ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.records FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT, UPDATE, DELETE ON app.records TO tenantry_app;

-- tenant_id and dataset_id are strongly correlated; without this the planner underestimates a
-- dataset's rows by orders of magnitude and walks the heap through an index in key order instead
-- of a bitmap scan.
CREATE STATISTICS app.records_tenant_dataset (dependencies, ndistinct) ON tenant_id, dataset_id FROM app.records;
