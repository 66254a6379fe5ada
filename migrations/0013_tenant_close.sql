-- Closing a tenant: it is closed (its people may only export their data), and its data is
-- deleted once the retention period the operator configured has passed (`delete_after`). What
-- billing and compliance need is kept: the tenant row, its ledger, deliveries, billing state and
-- reconciliations, its audit log and its support sessions. `data_deleted_at` says the deletion
-- has happened (it runs once; running it again finds nothing to do).
SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.tenants
  ADD COLUMN closed_at timestamptz,
  ADD COLUMN delete_after timestamptz,
  ADD COLUMN data_deleted_at timestamptz,
  ADD CONSTRAINT tenants_closed_has_dates
    CHECK ((status = 'closed') = (closed_at IS NOT NULL AND delete_after IS NOT NULL)),
  ADD CONSTRAINT tenants_deleted_only_when_closed
    CHECK (data_deleted_at IS NULL OR status = 'closed');
