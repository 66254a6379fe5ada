-- Chunks of record text for retrieval: tenant-owned like everything else, so RLS governs
-- retrieval. A chunk names the record version it was cut from (citations quote it) and goes away
-- with its record (ON DELETE CASCADE); ingest replaces the chunks of a changed record.
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.chunks (
  tenant_id       uuid NOT NULL,
  dataset_id      uuid NOT NULL,
  record_key      text NOT NULL,
  chunk_no        integer NOT NULL CHECK (chunk_no >= 0),
  record_version  integer NOT NULL CHECK (record_version >= 1),
  column_name     text NOT NULL,
  content         text NOT NULL,
  tsv             tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED,
  -- Any dimension (the model decides); NULL until the embed pipeline has run.
  embedding       vector,
  embedding_model text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, dataset_id, record_key, chunk_no),
  FOREIGN KEY (tenant_id, dataset_id, record_key)
    REFERENCES app.records (tenant_id, dataset_id, key) ON DELETE CASCADE
);

CREATE INDEX chunks_tsv ON app.chunks USING gin (tsv);
CREATE INDEX chunks_pending ON app.chunks (tenant_id, created_at) WHERE embedding IS NULL;
-- Approximate search per supported dimension (Titan V2: 256, 512, 1024).
CREATE INDEX chunks_embedding_256 ON app.chunks USING hnsw ((embedding::vector(256)) vector_cosine_ops)
  WHERE vector_dims(embedding) = 256;
CREATE INDEX chunks_embedding_512 ON app.chunks USING hnsw ((embedding::vector(512)) vector_cosine_ops)
  WHERE vector_dims(embedding) = 512;
CREATE INDEX chunks_embedding_1024 ON app.chunks USING hnsw ((embedding::vector(1024)) vector_cosine_ops)
  WHERE vector_dims(embedding) = 1024;

ALTER TABLE app.chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.chunks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.chunks FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT, UPDATE, DELETE ON app.chunks TO tenantry_app;
