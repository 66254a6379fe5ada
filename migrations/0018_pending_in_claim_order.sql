-- Pending chunks in the order the embedder claims them (created_at, record_key, chunk_no): with
-- only (tenant_id, created_at), every chunk of one write shares a created_at (the transaction's),
-- so a claim of 64 sorted all of a 15,000-record import's chunks first (14,681 rows read for 64,
-- 133-375 ms under load; BENCHMARKS.md, analytics). The new index is built beside the old one and
-- swapped in, so reads of app.chunks (retrieval) go on during the build; writes to it wait for one
-- scan of the pending rows, as in 0015: on a large deployment, apply it in a quiet hour.
SET LOCAL ROLE tenantry_owner;

CREATE INDEX chunks_pending_claim ON app.chunks (tenant_id, created_at, record_key, chunk_no)
  WHERE embedding IS NULL;
DROP INDEX app.chunks_pending;
ALTER INDEX app.chunks_pending_claim RENAME TO chunks_pending;
