-- A reporting view made by the owner without security_invoker: it reads api_keys through the
-- owner's lookup policy, so every tenant sees every tenant's keys.
-- expect: roles::app_role_has_exactly_the_grants_the_migrations_give
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
SET ROLE tenantry_owner;
CREATE VIEW app.key_names AS SELECT tenant_id, prefix, name FROM app.api_keys;
GRANT SELECT ON app.key_names TO tenantry_app;
RESET ROLE;
