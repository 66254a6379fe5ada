-- Usage metering and billing. The ledger (usage_events) is the truth: append-only for the app role,
-- idempotent by event id. Deliveries are the outbox towards Stripe: one row per meter event we send
-- (or sent), its identifier and value fixed before the call, so a retry after any crash sends the
-- same identifier with the same value and Stripe's duplicate answer settles it.
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.usage_events (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  event_id     uuid NOT NULL,
  meter        text NOT NULL CHECK (meter IN ('queries', 'questions', 'ingested_records', 'storage', 'seats')),
  quantity     bigint NOT NULL CHECK (quantity > 0),
  occurred_at  timestamptz NOT NULL,
  -- The aggregation window the event belongs to (its start), fixed when the event is recorded.
  window_start timestamptz NOT NULL CHECK (window_start <= occurred_at),
  source       text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
  recorded_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX usage_events_window ON app.usage_events (tenant_id, meter, window_start);

CREATE TABLE app.usage_deliveries (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  meter        text NOT NULL,
  window_start timestamptz NOT NULL,
  -- 0: the window's first event; 1, 2, ...: corrections (late events, reconciliation repairs).
  seq          integer NOT NULL CHECK (seq >= 0),
  -- What Stripe sees: derived from the key, so any retry of this delivery carries the same one.
  identifier   text NOT NULL GENERATED ALWAYS AS (
                 'tnt_' || replace(tenant_id::text, '-', '') || '_' || meter || '_'
                 || extract(epoch FROM window_start - timestamptz '1970-01-01 00:00:00+00')::int8::text
                 || '_' || seq::text) STORED,
  -- Positive; a reconciliation repair may be negative (Stripe takes negative corrections).
  value        bigint NOT NULL CHECK (value <> 0 AND (value > 0 OR kind = 'repair')),
  -- What it was for: 'window' (the meter's send), 'repair' (reconciliation).
  kind         text NOT NULL DEFAULT 'window' CHECK (kind IN ('window', 'repair')),
  event_time   timestamptz NOT NULL,
  status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed', 'expired')),
  reason       text CHECK (length(reason) <= 500),
  attempts     integer NOT NULL DEFAULT 0,
  lease_until  timestamptz,
  -- Who holds the lease: a sender settles and renews only its own claim.
  claim_id     uuid,
  created_at   timestamptz NOT NULL DEFAULT now(),
  settled_at   timestamptz,
  PRIMARY KEY (tenant_id, meter, window_start, seq),
  UNIQUE (tenant_id, identifier)
);
CREATE INDEX usage_deliveries_open ON app.usage_deliveries (tenant_id, meter) WHERE status = 'pending';

-- Which Stripe customer bills a tenant, and the billing state Stripe's webhooks last told us. The
-- *_event_at columns hold the Stripe event's `created` time, so an older event never overwrites a
-- newer one (webhooks arrive out of order).
CREATE TABLE app.billing_customers (
  tenant_id            uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  stripe_customer_id   text NOT NULL UNIQUE CHECK (stripe_customer_id ~ '^cus_[A-Za-z0-9_]{1,64}$'),
  billing_status       text NOT NULL DEFAULT 'none' CHECK (billing_status IN ('none', 'active', 'past_due', 'canceled')),
  status_event_at      timestamptz,
  subscription_id      text,
  last_invoice_status  text CHECK (last_invoice_status IN ('paid', 'payment_failed')),
  last_invoice_id      text,
  invoice_event_at     timestamptz,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id)
);

-- Reconciliation results: one row per run, meter and day (drift = ledger - Stripe).
CREATE TABLE app.billing_reconciliations (
  tenant_id     uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  run_id        uuid NOT NULL,
  meter         text NOT NULL,
  day           date NOT NULL,
  ledger_total  bigint NOT NULL,
  stripe_total  bigint,
  drift         bigint,
  action        text NOT NULL CHECK (action IN ('in_sync', 'repaired', 'in_flight', 'rejected', 'unavailable', 'no_customer')),
  detail        text CHECK (length(detail) <= 500),
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, run_id, meter, day)
);
CREATE INDEX billing_reconciliations_recent ON app.billing_reconciliations (tenant_id, created_at DESC);

-- Seats: membership comes from Auth0's event stream, which may deliver out of order. A removal
-- keeps the row (removed_at), and membership_event_at keeps an older event from undoing a newer one.
ALTER TABLE app.members ADD COLUMN removed_at timestamptz, ADD COLUMN membership_event_at timestamptz;

-- Webhook events already acted on, per tenant (dedupe in the same transaction as the effect).
CREATE TABLE app.processed_webhooks (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  source       text NOT NULL CHECK (source IN ('stripe', 'auth0')),
  event_id     text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
  event_type   text NOT NULL CHECK (length(event_type) <= 255),
  received_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, source, event_id)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['usage_events', 'usage_deliveries', 'billing_customers',
                           'billing_reconciliations', 'processed_webhooks'] LOOP
    EXECUTE format('ALTER TABLE app.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE app.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON app.%I FOR ALL
                      USING (tenant_id = (SELECT app.current_tenant_id()))
                      WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))', t);
  END LOOP;
END
$$;

-- Append-only: the ledger and the reconciliation record can be read and added to, never changed.
GRANT SELECT, INSERT ON app.usage_events, app.billing_reconciliations, app.processed_webhooks TO tenantry_app;
-- A delivery's identifier, value and window never change once written; only its progress does.
GRANT SELECT, INSERT ON app.usage_deliveries TO tenantry_app;
GRANT UPDATE (status, reason, attempts, lease_until, claim_id, settled_at) ON app.usage_deliveries TO tenantry_app;
GRANT SELECT, INSERT, UPDATE ON app.billing_customers TO tenantry_app;

-- Stripe customer -> tenant, for webhooks (which never trust metadata for the tenant).
CREATE POLICY owner_lookup ON app.billing_customers FOR SELECT TO tenantry_owner USING (true);
CREATE FUNCTION app.tenant_for_stripe_customer(p_customer_id text)
  RETURNS SETOF uuid
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT b.tenant_id FROM app.billing_customers b WHERE b.stripe_customer_id = p_customer_id $$;
REVOKE EXECUTE ON FUNCTION app.tenant_for_stripe_customer(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenant_for_stripe_customer(text) TO tenantry_app;
