-- Impersonation: support staff acting in one tenant for a bounded time, with a reason, as the
-- tenant's own audit log shows.
--
-- - A session (app.impersonation_sessions) is for one tenant and one staff member, at most 60
--   minutes from its start, and cannot be extended: a trigger lets a row change only by being
--   approved (once per approval) or ended (once). Rows are never deleted.
-- - The tenant's owner decides whether support may come in at all (tenants.support_access):
--   `off`, `read_only` (read-only sessions, no asking; the default) or `ask` (every session waits
--   for a tenant admin's approval; read-write sessions are possible only here).
-- - A read-only session's transactions run as tenantry_impersonation: the tenant functions log in
--   for them as tenantry_impersonator, a login role with no privilege of its own whose one
--   membership is tenantry_impersonation (not inherited: SET LOCAL ROLE in the transaction), and
--   that role can only read, apart from appending to the audit log. Its reads pass a restrictive
--   policy on every table: the transaction's session (app.impersonation_id) must be live, for
--   this tenant (app.tenant_id) and this staff member (app.actor_id). So a handler bug, a session
--   id replayed after its end, or a RESET ROLE, can neither write nor read beyond the session.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_impersonation') THEN
    CREATE ROLE tenantry_impersonation NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_impersonator') THEN
    CREATE ROLE tenantry_impersonator LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT;
  END IF;
  IF NOT pg_has_role('tenantry_impersonator', 'tenantry_impersonation', 'SET') THEN
    GRANT tenantry_impersonation TO tenantry_impersonator WITH INHERIT FALSE, SET TRUE;
  END IF;
  -- Nobody else becomes it (a development version of this file granted it to the support role;
  -- roles are cluster-wide, so a cluster that ran it would keep that grant).
  IF EXISTS (SELECT FROM pg_auth_members
             WHERE roleid = 'tenantry_impersonation'::regrole
               AND member = 'tenantry_support'::regrole) THEN
    REVOKE tenantry_impersonation FROM tenantry_support;
  END IF;
END
$$;

SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.tenants
  ADD COLUMN support_access text NOT NULL DEFAULT 'read_only'
    CHECK (support_access IN ('off', 'read_only', 'ask'));

-- No foreign key to app.tenants, like the audit log: the record of who came in outlives the
-- tenant's data (RLS confines writes to the transaction's tenant, which exists).
CREATE TABLE app.impersonation_sessions (
  tenant_id          uuid NOT NULL,
  session_id         uuid NOT NULL UNIQUE,
  staff_id           text NOT NULL CHECK (length(staff_id) BETWEEN 1 AND 256),
  reason             text NOT NULL CHECK (length(reason) BETWEEN 10 AND 1000),
  ticket             text CHECK (length(ticket) BETWEEN 1 AND 100),
  mode               text NOT NULL CHECK (mode IN ('read_only', 'read_write')),
  allow_export       boolean NOT NULL DEFAULT false,
  -- Whose approval the session waits for, fixed at its start.
  needs_staff_approval  boolean NOT NULL,
  needs_tenant_approval boolean NOT NULL,
  staff_approved_by  text CHECK (length(staff_approved_by) BETWEEN 1 AND 256),
  staff_approved_at  timestamptz,
  tenant_approved_by text CHECK (length(tenant_approved_by) BETWEEN 1 AND 300),
  tenant_approved_at timestamptz,
  started_at         timestamptz NOT NULL DEFAULT now(),
  expires_at         timestamptz NOT NULL,
  ended_at           timestamptz,
  ended_by           text CHECK (length(ended_by) BETWEEN 1 AND 300),
  PRIMARY KEY (tenant_id, session_id),
  CHECK (expires_at > started_at AND expires_at <= started_at + interval '60 minutes'),
  -- A second pair of eyes is a second person.
  CHECK (staff_approved_by IS DISTINCT FROM staff_id),
  -- A read-write or exporting session needs a second support_admin.
  CHECK (needs_staff_approval OR (mode = 'read_only' AND NOT allow_export)),
  CHECK ((staff_approved_by IS NULL) = (staff_approved_at IS NULL)),
  CHECK ((tenant_approved_by IS NULL) = (tenant_approved_at IS NULL)),
  CHECK ((ended_at IS NULL) = (ended_by IS NULL))
);
CREATE INDEX impersonation_sessions_recent ON app.impersonation_sessions (tenant_id, started_at DESC);

ALTER TABLE app.impersonation_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.impersonation_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.impersonation_sessions FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
-- The admin routes list sessions across tenants (who is in which tenant right now).
CREATE POLICY support_read ON app.impersonation_sessions FOR SELECT TO tenantry_support USING (true);
-- For the lookups below (SECURITY DEFINER, as the owner).
CREATE POLICY owner_lookup ON app.impersonation_sessions FOR SELECT TO tenantry_owner USING (true);

-- Approved once, ended once, nothing else: in particular never extended, never re-opened.
CREATE FUNCTION app.impersonation_session_fixed() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
  BEGIN
    -- Moved to another tenant: left for the policy's WITH CHECK to refuse (as the audit chain).
    IF NEW.tenant_id IS DISTINCT FROM app.current_tenant_id() THEN
      RETURN NEW;
    END IF;
    IF (NEW.tenant_id, NEW.session_id, NEW.staff_id, NEW.reason, NEW.ticket, NEW.mode,
        NEW.allow_export, NEW.needs_staff_approval, NEW.needs_tenant_approval, NEW.started_at,
        NEW.expires_at)
       IS DISTINCT FROM
       (OLD.tenant_id, OLD.session_id, OLD.staff_id, OLD.reason, OLD.ticket, OLD.mode,
        OLD.allow_export, OLD.needs_staff_approval, OLD.needs_tenant_approval, OLD.started_at,
        OLD.expires_at)
       OR (OLD.staff_approved_by IS NOT NULL
           AND (NEW.staff_approved_by, NEW.staff_approved_at) IS DISTINCT FROM (OLD.staff_approved_by, OLD.staff_approved_at))
       OR (OLD.tenant_approved_by IS NOT NULL
           AND (NEW.tenant_approved_by, NEW.tenant_approved_at) IS DISTINCT FROM (OLD.tenant_approved_by, OLD.tenant_approved_at))
       OR (OLD.ended_at IS NOT NULL
           AND (NEW.ended_at, NEW.ended_by) IS DISTINCT FROM (OLD.ended_at, OLD.ended_by)) THEN
      RAISE EXCEPTION 'an impersonation session is only approved or ended, once'
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
  END
  $$;
CREATE TRIGGER impersonation_sessions_fixed BEFORE UPDATE ON app.impersonation_sessions
  FOR EACH ROW EXECUTE FUNCTION app.impersonation_session_fixed();
CREATE TRIGGER impersonation_sessions_kept BEFORE DELETE ON app.impersonation_sessions
  FOR EACH ROW EXECUTE FUNCTION app.audit_refuse_change();
CREATE TRIGGER impersonation_sessions_no_truncate BEFORE TRUNCATE ON app.impersonation_sessions
  FOR EACH STATEMENT EXECUTE FUNCTION app.audit_refuse_change();

-- Whether a session is usable now: not ended, not expired, approved by whoever must approve it.
CREATE FUNCTION app.impersonation_usable(s app.impersonation_sessions) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$
    SELECT s.ended_at IS NULL AND s.expires_at > now()
       AND (NOT s.needs_staff_approval OR s.staff_approved_at IS NOT NULL)
       AND (NOT s.needs_tenant_approval OR s.tenant_approved_at IS NOT NULL)
  $$;

-- The session a request names, before any tenant is known (authentication): its tenant, staff
-- member, mode and state, and the tenant's status and support access setting.
CREATE FUNCTION app.impersonation_for(p_session uuid)
  RETURNS TABLE (tenant_id uuid, staff_id text, mode text, allow_export boolean,
                 expires_at timestamptz, ended boolean, awaiting_approval boolean,
                 tenant_status text, support_access text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT s.tenant_id, s.staff_id, s.mode, s.allow_export, s.expires_at, s.ended_at IS NOT NULL,
           (s.needs_staff_approval AND s.staff_approved_at IS NULL)
             OR ((s.needs_tenant_approval OR t.support_access = 'ask') AND s.tenant_approved_at IS NULL),
           t.status, t.support_access
    FROM app.impersonation_sessions s JOIN app.tenants t ON t.tenant_id = s.tenant_id
    WHERE s.session_id = p_session
  $$;

-- Whether this transaction's session (app.impersonation_id) is live, for this transaction's
-- tenant and actor, in a tenant that lets support in as the session would (its setting now). What
-- the restrictive policies below ask; the clock is read per statement, so a transaction that
-- outlives the session's hour reads nothing more.
CREATE FUNCTION app.impersonation_live() RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT coalesce((
      SELECT app.impersonation_usable(s) AND s.expires_at > clock_timestamp()
         AND t.status <> 'closed' AND t.support_access <> 'off'
         -- The tenant's setting now, not at the session's start: read-write only under `ask`,
         -- and under `ask` nothing without the tenant's approval.
         AND (s.mode = 'read_only' OR t.support_access = 'ask')
         AND (t.support_access <> 'ask' OR s.tenant_approved_at IS NOT NULL)
      FROM app.impersonation_sessions s JOIN app.tenants t ON t.tenant_id = s.tenant_id
      WHERE s.session_id = nullif(current_setting('app.impersonation_id', true), '')::uuid
        AND s.tenant_id = app.current_tenant_id()
        AND 'staff:' || s.staff_id = app.current_actor_id()), false)
  $$;

REVOKE EXECUTE ON FUNCTION app.impersonation_for(uuid), app.impersonation_live() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.impersonation_for(uuid) TO tenantry_app;
GRANT EXECUTE ON FUNCTION app.impersonation_live(), app.current_tenant_id(), app.current_actor_id(),
  app.audit_hash(app.audit_events) TO tenantry_impersonation;
GRANT EXECUTE ON FUNCTION app.impersonation_usable(app.impersonation_sessions)
  TO tenantry_app, tenantry_support;

GRANT USAGE ON SCHEMA app TO tenantry_impersonation;

-- What a read-only session reads: the tenant's data and state, under the tenant's RLS and a live
-- session. Nothing of API keys, members or webhooks (secret-revealing or not the tenant's data).
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'datasets', 'records', 'chunks', 'usage_events',
                           'usage_deliveries', 'billing_customers', 'billing_reconciliations',
                           'audit_events', 'audit_heads', 'impersonation_sessions'] LOOP
    EXECUTE format('GRANT SELECT ON app.%I TO tenantry_impersonation', t);
    EXECUTE format(
      'CREATE POLICY impersonation_live ON app.%I AS RESTRICTIVE FOR ALL TO tenantry_impersonation '
      'USING ((SELECT app.impersonation_live())) WITH CHECK ((SELECT app.impersonation_live()))', t);
  END LOOP;
END
$$;
-- It appends to the audit log (every request under impersonation is recorded, reads included).
GRANT INSERT (tenant_id, action, target, details, request_id) ON app.audit_events TO tenantry_impersonation;
GRANT INSERT, UPDATE (seq, hash) ON app.audit_heads TO tenantry_impersonation;

-- The app role starts, approves and ends sessions (admin and tenant routes, in the tenant's
-- transaction); nothing else about a session changes.
GRANT SELECT, INSERT ON app.impersonation_sessions TO tenantry_app;
GRANT UPDATE (staff_approved_by, staff_approved_at, tenant_approved_by, tenant_approved_at,
              ended_at, ended_by) ON app.impersonation_sessions TO tenantry_app;
GRANT SELECT ON app.impersonation_sessions TO tenantry_support;
