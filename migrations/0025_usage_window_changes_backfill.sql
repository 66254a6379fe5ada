-- Billing at scale (issue 14, item 4), 3 of 3: the windows the ledger held before 0024's trigger.
-- Its own transaction, after the trigger's has committed: it only reads the ledger, so writers
-- never wait for it, and a window noted by both it and the trigger is planned once (a window
-- planned twice plans nothing the second time).
SET LOCAL ROLE tenantry_owner;

-- Windows the previous planner would still have scanned (its horizon: 35 days sendable plus a
-- billing period) are noted once, so the first plan after this migration covers them all. The
-- owner is subject to these tables' forced RLS, so it notes them tenant by tenant, with the
-- tenant set for this transaction as a request's TenantTx sets it (no DDL on the live tables).
DO $$
DECLARE t uuid;
BEGIN
  FOR t IN SELECT tenant_id FROM app.tenants LOOP
    PERFORM set_config('app.tenant_id', t::text, true);
    INSERT INTO app.usage_window_changes (tenant_id, meter, window_start)
    SELECT DISTINCT tenant_id, meter, window_start FROM app.usage_events
    WHERE tenant_id = t AND window_start >= now() - interval '66 days';
  END LOOP;
  PERFORM set_config('app.tenant_id', '', true);
END
$$;
