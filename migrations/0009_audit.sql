-- The audit log: what was done in a tenant, by whom, written in the same transaction as the action
-- it records (so an action and its record commit together or not at all). The tenant reads it.
--
-- - Tenant-owned under forced RLS like every table.
-- - Append-only for every role: no UPDATE or DELETE grant to anyone, and triggers that refuse
--   UPDATE, DELETE and TRUNCATE even for the owner. Only a superuser (who can disable triggers)
--   can change a row, and the chain shows it.
-- - Hash-chained per tenant: each row's hash covers the previous row's hash and this row's
--   canonical content (app.audit_hash), so a changed, removed or inserted row breaks the chain at
--   that row. The tenant's head row (app.audit_heads) holds the last seq and hash; its row lock
--   serializes the tenant's writers until they commit, without any lock shared between tenants.
-- - Who, when and under which impersonation are the transaction's (app.actor_id,
--   app.impersonation_id, now()), set by the trigger: a writer chooses only what happened.
-- - Rows never hold secrets or record contents: counts and identifiers only (the application's
--   rule; `details` is at most 4 KiB).
SET LOCAL ROLE tenantry_owner;

-- No foreign key to app.tenants: the log outlives its tenant (a closed tenant's data is deleted,
-- the record of what was done with it is kept), and RLS already confines writes to the
-- transaction's tenant, which exists.
CREATE TABLE app.audit_events (
  tenant_id        uuid NOT NULL,
  seq              bigint NOT NULL CHECK (seq >= 1),
  occurred_at      timestamptz NOT NULL,
  actor_id         text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 300),
  impersonation_id uuid,
  action           text NOT NULL CHECK (length(action) <= 64 AND action ~ '^[a-z][a-z_]*(\.[a-z][a-z_]*)+$'),
  target           text CHECK (length(target) BETWEEN 1 AND 300),
  details          jsonb NOT NULL DEFAULT '{}'
                   CHECK (jsonb_typeof(details) = 'object' AND octet_length(details::text) <= 4096),
  request_id       text CHECK (length(request_id) BETWEEN 1 AND 128),
  prev_hash        bytea NOT NULL CHECK (length(prev_hash) = 32),
  hash             bytea NOT NULL CHECK (length(hash) = 32),
  PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE app.audit_heads (
  tenant_id uuid PRIMARY KEY,
  seq       bigint NOT NULL CHECK (seq >= 0),
  hash      bytea NOT NULL CHECK (length(hash) = 32)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['audit_events', 'audit_heads'] LOOP
    EXECUTE format('ALTER TABLE app.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE app.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON app.%I FOR ALL '
      'USING (tenant_id = (SELECT app.current_tenant_id())) '
      'WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))', t);
  END LOOP;
END
$$;

-- A row's hash: SHA-256 of the previous hash and the row's content as one JSON array, whose text
-- form is canonical (jsonb), with the time as integer microseconds since the epoch (independent
-- of the session's TimeZone). The one definition both the writer and `verify` use.
CREATE FUNCTION app.audit_hash(e app.audit_events) RETURNS bytea
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$
    SELECT sha256(e.prev_hash || convert_to(jsonb_build_array(
      e.tenant_id, e.seq, (extract(epoch FROM e.occurred_at) * 1000000)::bigint, e.actor_id,
      e.impersonation_id, e.action, e.target, e.details, e.request_id)::text, 'UTF8'))
  $$;

CREATE FUNCTION app.audit_chain() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
  BEGIN
    -- Another tenant's row (or no tenant set): left as it is, for the policy's WITH CHECK to
    -- refuse (RLS is checked before the NOT NULL constraints the unchained row would fail).
    IF NEW.tenant_id IS DISTINCT FROM app.current_tenant_id() THEN
      RETURN NEW;
    END IF;
    NEW.occurred_at := now();
    NEW.actor_id := coalesce(app.current_actor_id(), 'system');
    NEW.impersonation_id := nullif(current_setting('app.impersonation_id', true), '')::uuid;
    INSERT INTO app.audit_heads (tenant_id, seq, hash)
      VALUES (NEW.tenant_id, 0, decode(repeat('00', 32), 'hex'))
      ON CONFLICT (tenant_id) DO NOTHING;
    -- Takes the head's row lock: the tenant's next writer waits here until this one commits.
    UPDATE app.audit_heads SET seq = seq + 1 WHERE tenant_id = NEW.tenant_id
      RETURNING seq, hash INTO NEW.seq, NEW.prev_hash;
    NEW.hash := app.audit_hash(NEW);
    UPDATE app.audit_heads SET hash = NEW.hash WHERE tenant_id = NEW.tenant_id;
    RETURN NEW;
  END
  $$;

CREATE FUNCTION app.audit_refuse_change() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
  BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
      USING ERRCODE = 'insufficient_privilege';
  END
  $$;

CREATE TRIGGER audit_events_chain BEFORE INSERT ON app.audit_events
  FOR EACH ROW EXECUTE FUNCTION app.audit_chain();
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON app.audit_events
  FOR EACH ROW EXECUTE FUNCTION app.audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON app.audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION app.audit_refuse_change();
-- A head moves forward only (its row is the chain's end): never deleted.
CREATE TRIGGER audit_heads_kept BEFORE DELETE ON app.audit_heads
  FOR EACH ROW EXECUTE FUNCTION app.audit_refuse_change();
CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON app.audit_heads
  FOR EACH STATEMENT EXECUTE FUNCTION app.audit_refuse_change();

-- Writers name what happened; the trigger fills in the rest. The support role records what
-- support does (impersonated reads included) and reads a tenant's log, under the same RLS.
GRANT SELECT, INSERT (tenant_id, action, target, details, request_id) ON app.audit_events
  TO tenantry_app, tenantry_support;
GRANT SELECT, INSERT, UPDATE (seq, hash) ON app.audit_heads TO tenantry_app, tenantry_support;
GRANT EXECUTE ON FUNCTION app.audit_hash(app.audit_events) TO tenantry_app, tenantry_support;
