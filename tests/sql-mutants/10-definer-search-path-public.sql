-- A SECURITY DEFINER lookup whose search_path puts public first and leaves pg_temp implicit (searched first).
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER FUNCTION app.tenant_for_auth0_org(text) SET search_path = public, pg_catalog;
