-- The app role may delete tenants (and, by cascade, everything they own).
-- expect: roles::app_role_has_exactly_the_grants_the_migrations_give
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
GRANT DELETE ON app.tenants TO tenantry_app;
