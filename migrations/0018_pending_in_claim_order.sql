-- Pending chunks in the order the embedder claims them (created_at, record_key, chunk_no): with
-- only (tenant_id, created_at), every chunk of one write shares a created_at (the transaction's),
-- so a claim of 64 sorted all of a 15,000-record import's chunks first (14,681 rows read for 64,
-- 133-375 ms under load; BENCHMARKS.md, analytics). Like 0015, building it holds writes to
-- app.chunks back for one scan of the pending rows: on a large deployment, apply it in a quiet hour.
SET LOCAL ROLE tenantry_owner;

DROP INDEX app.chunks_pending;
CREATE INDEX chunks_pending ON app.chunks (tenant_id, created_at, record_key, chunk_no)
  WHERE embedding IS NULL;
