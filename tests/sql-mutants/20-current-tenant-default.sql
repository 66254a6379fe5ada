-- app.current_tenant_id() falls back to a default tenant (the nil id) when no tenant is set.
-- expect: isolation::without_a_tenant_every_read_is_empty_and_every_write_fails
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT coalesce(nullif(current_setting('app.tenant_id', true), '')::uuid,
                        '00000000-0000-0000-0000-000000000000') $$;
