-- RLS on api_keys no longer forced: the owner (which the SECURITY DEFINER lookups run as) bypasses it.
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER TABLE app.api_keys NO FORCE ROW LEVEL SECURITY;
