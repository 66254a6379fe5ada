-- Embedding outside any transaction: a worker claims pending chunks under a lease (its id and an
-- expiry) in one short transaction, calls the embedder with no transaction open, and writes the
-- vectors back in another, only where it still holds the lease. A chunk replaced meanwhile (a new
-- record version: a new row, no lease) or claimed by another worker after the lease expired is
-- not overwritten with a stale vector.
ALTER TABLE app.chunks
  ADD COLUMN embed_lease uuid,
  ADD COLUMN embed_lease_until timestamptz,
  ADD CONSTRAINT chunks_embed_lease_whole CHECK ((embed_lease IS NULL) = (embed_lease_until IS NULL));
