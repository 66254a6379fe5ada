-- The org lookup compares null-safely: a missing org id finds every tenant that has none.
-- expect: catalog::security_definer_lookups_answer_only_their_contract
CREATE OR REPLACE FUNCTION app.tenant_for_auth0_org(p_org_id text)
  RETURNS TABLE (tenant_id uuid, status text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT t.tenant_id, t.status FROM app.tenants t WHERE t.auth0_org_id IS NOT DISTINCT FROM p_org_id $$;
