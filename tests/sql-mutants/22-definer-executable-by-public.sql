-- A SECURITY DEFINER lookup executable by every role on the server.
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
GRANT EXECUTE ON FUNCTION app.tenant_ids() TO PUBLIC;
