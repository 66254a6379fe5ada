-- API-key scopes: what a key was made for (`read`: read data, query and ask; `ingest`: write
-- records), chosen at creation and never changed. Keys made before scopes existed could do
-- everything their tenant could; they keep read and ingest, and lose dataset management (no scope
-- grants it). Stored sorted, without repeats: exactly one of three sets.
SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.api_keys
  ADD COLUMN scopes text[] NOT NULL DEFAULT '{read,ingest}'
  CONSTRAINT api_keys_scopes_known CHECK (scopes IN ('{read}', '{ingest}', '{read,ingest}'));
ALTER TABLE app.api_keys ALTER COLUMN scopes DROP DEFAULT;

-- Immutable after creation: the app may only record a key's use and revoke it.
REVOKE UPDATE ON app.api_keys FROM tenantry_app;
GRANT UPDATE (last_used_at, revoked_at) ON app.api_keys TO tenantry_app;

-- The lookup returns the scopes too (its result type changes, so it is replaced).
DROP FUNCTION app.api_key_for_prefix(text);
CREATE FUNCTION app.api_key_for_prefix(p_prefix text)
  RETURNS TABLE (tenant_id uuid, key_id uuid, hash bytea, revoked boolean, tenant_status text, scopes text[])
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT k.tenant_id, k.key_id, k.hash, k.revoked_at IS NOT NULL, t.status, k.scopes
    FROM app.api_keys k JOIN app.tenants t ON t.tenant_id = k.tenant_id
    WHERE k.prefix = p_prefix
  $$;
REVOKE EXECUTE ON FUNCTION app.api_key_for_prefix(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.api_key_for_prefix(text) TO tenantry_app;
