-- The owner's read-only lookup policy on api_keys granted to everyone: every tenant reads every key hash.
-- expect: isolation::tenant_a_cannot_read_or_touch_tenant_b
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER POLICY owner_lookup ON app.api_keys TO PUBLIC;
