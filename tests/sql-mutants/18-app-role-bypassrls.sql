-- The app role gets BYPASSRLS (cluster-wide: scripts/mutants-sql runs the restore line after the run).
-- expect: roles::app_role_is_unprivileged
-- expect: roles::app_role_cannot_escape_rls
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- restore: ALTER ROLE tenantry_app NOBYPASSRLS;
ALTER ROLE tenantry_app BYPASSRLS;
