-- The tenant policy on records widened with OR true: every tenant reads and changes every record.
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: rls_queries::retrieval_queries_without_a_tenant_filter_return_only_the_tenants_rows
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER POLICY tenant_isolation ON app.records
  USING (tenant_id = (SELECT app.current_tenant_id()) OR true);
