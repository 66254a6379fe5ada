-- The pending-chunks lookup forgets its age condition: it names tenants that have nothing overdue.
-- expect: catalog::security_definer_lookups_answer_only_their_contract
CREATE OR REPLACE FUNCTION app.tenants_with_pending_chunks(p_older_than interval)
  RETURNS SETOF uuid
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT DISTINCT c.tenant_id FROM app.chunks c WHERE c.embedding IS NULL $$;
