-- Plan entitlements: what each tenant's billable requests have counted against its plan's limits
-- in a billing period (the subscription's, or the UTC calendar month). A request reserves its
-- quantity with one conditional upsert that stays within the plan's hard limit, so concurrent
-- requests are admitted exactly up to it; a request that fails after admission gives its
-- reservation back.
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.usage_counters (
  tenant_id         uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  meter             text NOT NULL CHECK (meter IN ('queries', 'questions', 'ingested_records', 'storage', 'seats')),
  period_start      timestamptz NOT NULL,
  used              bigint NOT NULL CHECK (used >= 0),
  -- When the period's count first reached the plan's soft limit (notified once).
  soft_notified_at  timestamptz,
  PRIMARY KEY (tenant_id, meter, period_start)
);

ALTER TABLE app.usage_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.usage_counters FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.usage_counters FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));

GRANT SELECT, INSERT ON app.usage_counters TO tenantry_app;
GRANT UPDATE (used, soft_notified_at) ON app.usage_counters TO tenantry_app;
GRANT SELECT ON app.usage_counters TO tenantry_support;
CREATE POLICY support_read ON app.usage_counters FOR SELECT TO tenantry_support USING (true);
GRANT SELECT ON app.usage_counters TO tenantry_impersonation;
CREATE POLICY impersonation_live ON app.usage_counters AS RESTRICTIVE FOR ALL TO tenantry_impersonation
  USING ((SELECT app.impersonation_live())) WITH CHECK ((SELECT app.impersonation_live()));

-- The estimate of the current period's bill, from Stripe's invoice preview, as the last
-- reconciliation read it (what `/v1/usage` shows: a cached figure, never a call per request).
ALTER TABLE app.billing_customers
  ADD COLUMN estimate_amount_due  bigint,
  ADD COLUMN estimate_currency    text CHECK (estimate_currency ~ '^[a-z]{3}$'),
  ADD COLUMN estimate_period_end  timestamptz,
  ADD COLUMN estimated_at         timestamptz;
