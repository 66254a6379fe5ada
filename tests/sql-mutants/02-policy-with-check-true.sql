-- The tenant policy on members checks nothing on write: a tenant can add members to another.
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER POLICY tenant_isolation ON app.members WITH CHECK (true);
