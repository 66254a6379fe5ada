-- Reconciliation records are kept for a retention the operator sets
-- (BILLING_RECONCILIATION_RETENTION_DAYS): the app role only appends to them, and this function,
-- called by the daily reconciliation in the tenant's transaction, deletes that tenant's records
-- older than the retention — never younger than 7 days, whatever it is asked.
SET LOCAL ROLE tenantry_owner;

CREATE FUNCTION app.prune_reconciliations(p_keep_days integer)
  RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    WITH gone AS (
      DELETE FROM app.billing_reconciliations
      WHERE tenant_id = app.current_tenant_id()
        AND created_at < now() - make_interval(days => greatest(p_keep_days, 7))
      RETURNING 1)
    SELECT count(*) FROM gone
  $$;
REVOKE EXECUTE ON FUNCTION app.prune_reconciliations(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.prune_reconciliations(integer) TO tenantry_app;
