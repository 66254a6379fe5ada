-- The key lookup matches by prefix (LIKE): a short or empty prefix returns other tenants' key hashes.
-- expect: catalog::security_definer_lookups_answer_only_their_contract
CREATE OR REPLACE FUNCTION app.api_key_for_prefix(p_prefix text)
  RETURNS TABLE (tenant_id uuid, key_id uuid, hash bytea, revoked boolean, tenant_status text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT k.tenant_id, k.key_id, k.hash, k.revoked_at IS NOT NULL, t.status
    FROM app.api_keys k JOIN app.tenants t ON t.tenant_id = k.tenant_id
    WHERE k.prefix LIKE p_prefix || '%'
  $$;
