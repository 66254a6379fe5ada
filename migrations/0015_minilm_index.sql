-- Approximate search for 384-dimension vectors: all-MiniLM-L6-v2, the embedded mode's real model
-- (rag::minilm), beside Titan V2's 256, 512 and 1024 (0005_chunks.sql). Partial like those, so it
-- holds only the rows of its dimension and costs nothing where the model is not used.
SET LOCAL ROLE tenantry_owner;

CREATE INDEX chunks_embedding_384 ON app.chunks USING hnsw ((embedding::vector(384)) vector_cosine_ops)
  WHERE vector_dims(embedding) = 384;
