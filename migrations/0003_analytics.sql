-- Analytics storage: records keep their data as JSONB (typed by the dataset's declared schema,
-- validated at ingest) plus the time column's value as a real timestamptz, so time-range and
-- time-bucket queries use an index instead of parsing JSON.
SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.datasets
  ADD CONSTRAINT datasets_columns_is_array CHECK (jsonb_typeof(columns) = 'array');

ALTER TABLE app.records
  ADD COLUMN ts timestamptz,
  ADD CONSTRAINT records_data_is_object CHECK (jsonb_typeof(data) = 'object');

-- Per tenant and dataset, by time: time ranges and buckets.
CREATE INDEX records_by_time ON app.records (tenant_id, dataset_id, ts);
