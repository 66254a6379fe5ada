-- Tenant lifecycle, first part: a tenant created from its Auth0 organization gets its billing
-- customer made for it. Until that has worked, `customer_pending` is true and the scheduled
-- reconcile retries it; `customer_error` says why the last attempt failed (for support). Tenants
-- provisioned otherwise (the demo seed, a tenant linked by hand) are not pending.
SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.tenants
  ADD COLUMN customer_pending boolean NOT NULL DEFAULT false,
  ADD COLUMN customer_error text CHECK (length(customer_error) <= 500);
