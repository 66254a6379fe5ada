-- The append-only ledger made updatable by the app role.
-- expect: roles::app_role_has_exactly_the_grants_the_migrations_give
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
GRANT UPDATE ON app.usage_events TO tenantry_app;
