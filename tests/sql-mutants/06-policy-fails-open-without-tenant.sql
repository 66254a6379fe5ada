-- The ledger's policy fails open when no tenant is set ("jobs need to see everything").
-- expect: isolation::without_a_tenant_every_read_is_empty_and_every_write_fails
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER POLICY tenant_isolation ON app.usage_events
  USING (tenant_id = (SELECT app.current_tenant_id()) OR (SELECT app.current_tenant_id()) IS NULL);
