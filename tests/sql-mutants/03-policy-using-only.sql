-- The tenant policy on datasets recreated with USING only, no WITH CHECK.
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
DROP POLICY tenant_isolation ON app.datasets;
CREATE POLICY tenant_isolation ON app.datasets FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()));
