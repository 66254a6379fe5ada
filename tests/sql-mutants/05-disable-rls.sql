-- RLS on chunks switched off: retrieval reaches every tenant's text.
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: rls_queries::retrieval_queries_without_a_tenant_filter_return_only_the_tenants_rows
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER TABLE app.chunks DISABLE ROW LEVEL SECURITY;
