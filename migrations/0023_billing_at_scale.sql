-- Billing at scale (issue 14, item 4), 1 of 3: reconciliation records a (meter, day) only when
-- its outcome changed since its last record (a repair, being an action, always), and one summary
-- per tenant and UTC day: how many runs, the last run's counts and the pairs not in sync. Both
-- are kept for the operator's retention. (Its own file: the index below is built over every
-- record earlier runs wrote, and holds only this table's writers, the reconciliation, while it
-- builds; the ledger's trigger in 0024 must not wait for it.)
SET LOCAL ROLE tenantry_owner;

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
