-- The support plane, first part: what the support role may read across tenants, for the admin
-- routes' tenant list and detail. Counts and states only: it may read tenants, their billing
-- state, usage and deliveries, and reconciliation results, but of members and chunks only the
-- columns that count them (no emails, no user ids, no content), and nothing at all of datasets,
-- records or API keys. A tenant's data is reached only through an impersonation session (a later
-- migration). Read-only: no INSERT, UPDATE or DELETE anywhere (it appends to the audit log, from
-- 0009). Policies are for SELECT and for this role alone; every other role sees exactly what it
-- did before.
SET LOCAL ROLE tenantry_owner;

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'members', 'chunks', 'billing_customers', 'usage_events',
                           'usage_deliveries', 'billing_reconciliations'] LOOP
    EXECUTE format(
      'CREATE POLICY support_read ON app.%I FOR SELECT TO tenantry_support USING (true)', t);
  END LOOP;
END
$$;

GRANT SELECT ON app.tenants, app.billing_customers, app.usage_events, app.usage_deliveries,
  app.billing_reconciliations TO tenantry_support;
GRANT SELECT (tenant_id, removed_at) ON app.members TO tenantry_support;
GRANT SELECT (tenant_id, created_at, embedding_model) ON app.chunks TO tenantry_support;
