-- The tenant clause moved into a restrictive policy next to a permissive USING (true) one:
-- the same rows today, but one dropped policy away from none.
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
DROP POLICY tenant_isolation ON app.processed_webhooks;
CREATE POLICY tenant_isolation ON app.processed_webhooks AS RESTRICTIVE FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY allow_all ON app.processed_webhooks FOR ALL USING (true) WITH CHECK (true);
