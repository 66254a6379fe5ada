-- Approximate search for 384-dimension vectors: all-MiniLM-L6-v2, the embedded mode's real model
-- (rag::minilm), beside Titan V2's 256, 512 and 1024 (0005_chunks.sql). Partial like those, so it
-- holds only the rows of its dimension: where the model is not used it stays empty and costs no
-- write. Building it reads all of app.chunks once, under a lock that holds ingest and embedding
-- writes back for that scan: on a large deployment, apply it in a quiet hour.
SET LOCAL ROLE tenantry_owner;

CREATE INDEX chunks_embedding_384 ON app.chunks USING hnsw ((embedding::vector(384)) vector_cosine_ops)
  WHERE vector_dims(embedding) = 384;
