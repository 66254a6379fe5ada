-- The org lookup returns more than its contract: the tenant's name and Stripe customer.
-- expect: catalog::security_definer_lookups_answer_only_their_contract
SET ROLE tenantry_owner;
DROP FUNCTION app.tenant_for_auth0_org(text);
CREATE FUNCTION app.tenant_for_auth0_org(p_org_id text)
  RETURNS TABLE (tenant_id uuid, status text, name text, stripe_customer_id text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT t.tenant_id, t.status, t.name, t.stripe_customer_id FROM app.tenants t WHERE t.auth0_org_id = p_org_id $$;
REVOKE EXECUTE ON FUNCTION app.tenant_for_auth0_org(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenant_for_auth0_org(text) TO tenantry_app;
RESET ROLE;
