-- Billing periods as Stripe bills them: each tenant's periods come from its subscription (webhooks
-- carry the current period; a missed or out-of-order webhook is repaired by reading the
-- subscription), and a period stays open until Stripe finalizes its invoice. Usage that arrives
-- for a finalized period is billed in the next open period (the "late" rule) and marked so.
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.billing_periods (
  tenant_id        uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  subscription_id  text NOT NULL CHECK (subscription_id ~ '^sub_[A-Za-z0-9_]{1,64}$'),
  period_start     timestamptz NOT NULL,
  period_end       timestamptz NOT NULL CHECK (period_end > period_start),
  -- Set once, when Stripe finalizes the invoice that bills this period's usage: from then on the
  -- period takes no more usage (Stripe would accept it and never bill it).
  invoice_id       text CHECK (length(invoice_id) BETWEEN 1 AND 128),
  finalized_at     timestamptz,
  -- Where we learned of it: a webhook or a read of the subscription (the repair).
  source           text NOT NULL CHECK (source IN ('webhook', 'subscription')),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, subscription_id, period_start),
  CHECK ((invoice_id IS NULL) = (finalized_at IS NULL))
);
CREATE INDEX billing_periods_open ON app.billing_periods (tenant_id, period_start) WHERE finalized_at IS NULL;

ALTER TABLE app.billing_periods ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.billing_periods FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.billing_periods FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));

-- Webhooks and the repair add periods, shorten a period a plan change cut short, and finalize;
-- a period is never deleted.
GRANT SELECT, INSERT ON app.billing_periods TO tenantry_app;
GRANT UPDATE (period_end, invoice_id, finalized_at, updated_at) ON app.billing_periods TO tenantry_app;
GRANT SELECT ON app.billing_periods TO tenantry_support;
CREATE POLICY support_read ON app.billing_periods FOR SELECT TO tenantry_support USING (true);
GRANT SELECT ON app.billing_periods TO tenantry_impersonation;
CREATE POLICY impersonation_live ON app.billing_periods AS RESTRICTIVE FOR ALL TO tenantry_impersonation
  USING ((SELECT app.impersonation_live())) WITH CHECK ((SELECT app.impersonation_live()));

-- The time usage at p_at is billed at: p_at itself, unless it lies in a finalized period; then the
-- start of the first open period after that one, or null while none is known (the usage waits).
-- Invoker's rights: it reads the periods under the caller's RLS. One expression and no SET
-- clause, so the planner inlines it into the meter's statements (every name in it is qualified).
CREATE FUNCTION app.billable_time(p_tenant uuid, p_at timestamptz)
  RETURNS timestamptz
  LANGUAGE sql STABLE
  AS $$
    SELECT CASE
      WHEN NOT EXISTS (SELECT 1 FROM app.billing_periods p
                       WHERE p.tenant_id = p_tenant AND p.finalized_at IS NOT NULL
                         AND p_at >= p.period_start AND p_at < p.period_end)
      THEN p_at
      ELSE (SELECT min(o.period_start) FROM app.billing_periods o
            WHERE o.tenant_id = p_tenant AND o.finalized_at IS NULL
              AND o.period_start >= (SELECT max(p.period_end) FROM app.billing_periods p
                                     WHERE p.tenant_id = p_tenant AND p.finalized_at IS NOT NULL
                                       AND p_at >= p.period_start AND p_at < p.period_end))
    END
  $$;
REVOKE EXECUTE ON FUNCTION app.billable_time(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.billable_time(uuid, timestamptz) TO tenantry_app;

-- A delivery whose window lies in a finalized period is sent stamped at the start of the next
-- open period (`late`); one planned before its period was finalized and never yet sent is
-- re-stamped the same way when it is claimed. Only its time moves, and only before the first
-- call: its identifier and value never change.
ALTER TABLE app.usage_deliveries ADD COLUMN late boolean NOT NULL DEFAULT false;
GRANT UPDATE (event_time, late) ON app.usage_deliveries TO tenantry_app;

-- When the first call for a delivery was made (set just before it, never changed after): a
-- delivery never called may still be re-stamped; one first called longer ago than Stripe's
-- identifier dedupe guarantee (24 hours) is checked against Stripe's summary before it is resent.
ALTER TABLE app.usage_deliveries ADD COLUMN first_sent_at timestamptz;
GRANT UPDATE (first_sent_at) ON app.usage_deliveries TO tenantry_app;
-- Deliveries already called before this migration: their first call's time is not known; their
-- creation is the earliest it can have been.
UPDATE app.usage_deliveries SET first_sent_at = created_at WHERE attempts > 0;

-- Stripe's meter error report named this delivery: it answered 200 and then did not count it
-- (why, as Stripe said). Set once, whatever the delivery's status; settling leaves it alone.
ALTER TABLE app.usage_deliveries ADD COLUMN rejected text CHECK (length(rejected) BETWEEN 1 AND 500);
GRANT UPDATE (rejected) ON app.usage_deliveries TO tenantry_app;

-- Each reconciliation row names the billing period its day was compared in (null: the tenant has
-- no subscription periods, and the calendar month is used).
ALTER TABLE app.billing_reconciliations ADD COLUMN period_start timestamptz;
