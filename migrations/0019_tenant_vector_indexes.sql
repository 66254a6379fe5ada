-- Per-tenant search indexes (rag::tenant_index): a tenant with many chunks gets an HNSW index and
-- a GIN index of its own, partial on `tenant_id = '<tenant>'` (app.chunks_tenant_<tenant, 32 hex
-- digits>_<dims> and _tsv), which the planner uses for that tenant's searches (they name the
-- tenant as a literal); the shared indexes (0005, 0015) serve everyone else. They are built and
-- dropped CONCURRENTLY, so ingest and embedding go on during a build. That needs the table's
-- owner, outside any transaction: no SECURITY DEFINER function can do it. So a login role of its
-- own, tenantry_indexer, may become the owner (SET ROLE, not inherited, as the impersonator
-- becomes its role), and only the scheduled vector-indexes function (and the local runner's
-- schedule) logs in as it. Once it has become the owner it can do what the owner can, so its
-- credential is held by that one function, which has no API, and whose code issues only index
-- DDL and per-tenant chunk counts (through the owner's lookup policy on app.chunks, 0006): never
-- a row's content.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_indexer') THEN
    CREATE ROLE tenantry_indexer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT;
  END IF;
  IF NOT pg_has_role('tenantry_indexer', 'tenantry_owner', 'SET') THEN
    GRANT tenantry_owner TO tenantry_indexer WITH INHERIT FALSE, SET TRUE;
  END IF;
END
$$;

SET LOCAL ROLE tenantry_owner;

-- Full-text candidates for the transaction's tenant. Under RLS a query's own conditions are
-- applied after the policy's, unless their functions are LEAKPROOF, and `tsvector @@ tsquery` is
-- not: so no GIN index can serve an app-role search, which reads every chunk of the tenant and
-- tests each (a 50,000-chunk tenant: ~55 ms, BENCHMARKS.md `tenant-index`). This function runs
-- as the owner, whose lookup policy on app.chunks (0006) reads without a barrier, with the tenant
-- as a literal (a UUID from the transaction's setting, never an argument), so the tenant's own
-- GIN index (rag::tenant_index) serves it. It returns keys and ranks only; the search reads the
-- chunks themselves under the caller's RLS. Only the app role may call it, which reads all of its
-- tenant's chunks under RLS anyway: the read-only impersonation role may not, since the
-- restrictive policies of 0012 (a live session, for this tenant and staff member) bind that role
-- and not the owner, and settings such as app.impersonation_id are the caller's to change.
CREATE FUNCTION app.text_candidates(p_query text, p_datasets uuid[], p_limit bigint)
  RETURNS TABLE (dataset_id uuid, record_key text, chunk_no integer, rank real)
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
  DECLARE
    t uuid := app.current_tenant_id();
  BEGIN
    IF t IS NULL THEN
      RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
      'SELECT c.dataset_id, c.record_key, c.chunk_no, ts_rank_cd(c.tsv, q) '
      'FROM app.chunks c, websearch_to_tsquery(''english'', $1) q '
      'WHERE c.tenant_id = %L::uuid AND c.tsv @@ q '
      '  AND ($2::uuid[] IS NULL OR c.dataset_id = ANY($2)) '
      'ORDER BY 4 DESC, 2, 3 LIMIT $3', t)
      USING p_query, p_datasets, p_limit;
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.text_candidates(text, uuid[], bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.text_candidates(text, uuid[], bigint) TO tenantry_app;
