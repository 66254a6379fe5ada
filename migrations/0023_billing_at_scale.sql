-- Billing at scale (issue 14, item 4).
--
-- 1. The meter's planner reads only the windows that changed since it last planned. Every insert
--    into the ledger notes the (meter, window) it touched in app.usage_window_changes, in the same
--    transaction (a statement trigger), and the planner, under the tenant's billing lock, deletes
--    the notes of closed windows and plans exactly those windows. A note is only ever inserted by
--    the ledger's writers and deleted by the planner: no row is updated, so ingest takes no lock
--    the planner waits on. A note whose event commits after the planner's delete is not deleted
--    (not visible to it), so it is planned next time; a window planned twice plans nothing the
--    second time (the planner compares the window's whole total with what its deliveries account
--    for, never adds the notes up).
-- 2. Reconciliation records a (meter, day) only when its outcome changed since its last record (a
--    repair, being an action, always), and one summary per tenant and UTC day: how many runs, the
--    last run's counts and the pairs not in sync. Both are kept for the operator's retention.
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.usage_window_changes (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  note_id      bigint GENERATED ALWAYS AS IDENTITY,
  meter        text NOT NULL,
  window_start timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, note_id)
);
CREATE INDEX usage_window_changes_due ON app.usage_window_changes (tenant_id, window_start);
ALTER TABLE app.usage_window_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.usage_window_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.usage_window_changes FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT, DELETE ON app.usage_window_changes TO tenantry_app;

-- Invoker's rights: the writer's own role and RLS (a tenant's transaction notes its own windows).
CREATE FUNCTION app.note_usage_windows()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    INSERT INTO app.usage_window_changes (tenant_id, meter, window_start)
    SELECT DISTINCT n.tenant_id, n.meter, n.window_start FROM new_events n;
    RETURN NULL;
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.note_usage_windows() FROM PUBLIC;
CREATE TRIGGER usage_window_changes AFTER INSERT ON app.usage_events
  REFERENCING NEW TABLE AS new_events
  FOR EACH STATEMENT EXECUTE FUNCTION app.note_usage_windows();

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

-- A (meter, day)'s last record, found without scanning the tenant's history.
CREATE INDEX billing_reconciliations_pair
  ON app.billing_reconciliations (tenant_id, meter, day, created_at DESC);

CREATE TABLE app.billing_reconciliation_days (
  tenant_id     uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  day           date NOT NULL,
  runs          integer NOT NULL CHECK (runs > 0),
  first_run_at  timestamptz NOT NULL,
  last_run_at   timestamptz NOT NULL,
  last_run_id   uuid NOT NULL,
  -- The last run's (meter, day) pairs compared, its count per action, and the pairs not in sync
  -- (meter, day, totals, drift, action, detail).
  checked       integer NOT NULL CHECK (checked >= 0),
  actions       jsonb NOT NULL,
  issues        jsonb NOT NULL,
  -- Repairs sent by all of the day's runs.
  repaired      integer NOT NULL CHECK (repaired >= 0),
  -- The last run's sum of |drift|.
  drift         bigint NOT NULL CHECK (drift >= 0),
  PRIMARY KEY (tenant_id, day)
);
ALTER TABLE app.billing_reconciliation_days ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.billing_reconciliation_days FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.billing_reconciliation_days FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT ON app.billing_reconciliation_days TO tenantry_app;
GRANT UPDATE (runs, last_run_at, last_run_id, checked, actions, issues, repaired, drift)
  ON app.billing_reconciliation_days TO tenantry_app;
GRANT SELECT ON app.billing_reconciliation_days TO tenantry_support;
CREATE POLICY support_read ON app.billing_reconciliation_days FOR SELECT TO tenantry_support
  USING (true);
GRANT SELECT ON app.billing_reconciliation_days TO tenantry_impersonation;
CREATE POLICY impersonation_live ON app.billing_reconciliation_days AS RESTRICTIVE FOR ALL
  TO tenantry_impersonation
  USING ((SELECT app.impersonation_live())) WITH CHECK ((SELECT app.impersonation_live()));

-- The retention covers the summaries too (same floor of a week).
CREATE OR REPLACE FUNCTION app.prune_reconciliations(p_keep_days integer)
  RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    WITH gone AS (
      DELETE FROM app.billing_reconciliations
      WHERE tenant_id = app.current_tenant_id()
        AND created_at < now() - make_interval(days => greatest(p_keep_days, 7))
      RETURNING 1),
    gone_days AS (
      DELETE FROM app.billing_reconciliation_days
      WHERE tenant_id = app.current_tenant_id()
        AND last_run_at < now() - make_interval(days => greatest(p_keep_days, 7))
      RETURNING 1)
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM gone_days)
  $$;
