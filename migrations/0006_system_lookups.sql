-- Lookups for scheduled jobs that work tenant by tenant: they need to know *which* tenants to visit
-- before any tenant is set. SECURITY DEFINER (run as the owner, under its read-only lookup policy),
-- returning tenant ids only: the work itself then runs in each tenant's TenantTx, under RLS.
SET LOCAL ROLE tenantry_owner;

CREATE POLICY owner_lookup ON app.chunks FOR SELECT TO tenantry_owner USING (true);

-- Tenants with chunks that have waited longer than p_older_than for an embedding (the embed queue
-- lost or never got the message). Served by the chunks_pending partial index.
CREATE FUNCTION app.tenants_with_pending_chunks(p_older_than interval)
  RETURNS SETOF uuid
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT DISTINCT c.tenant_id FROM app.chunks c
    WHERE c.embedding IS NULL AND c.created_at < now() - p_older_than
  $$;

-- Every tenant with its status, in a stable order (for jobs that visit them one at a time).
CREATE FUNCTION app.tenant_ids()
  RETURNS TABLE (tenant_id uuid, status text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT t.tenant_id, t.status FROM app.tenants t ORDER BY t.tenant_id $$;

REVOKE EXECUTE ON FUNCTION app.tenants_with_pending_chunks(interval), app.tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenants_with_pending_chunks(interval), app.tenant_ids() TO tenantry_app;
