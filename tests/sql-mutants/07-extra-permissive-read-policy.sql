-- A second, permissive read policy on billing_customers ("support needs to look customers up").
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
CREATE POLICY support_read ON app.billing_customers FOR SELECT USING (true);
