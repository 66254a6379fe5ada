-- The tenant context, the first tenant-owned tables and their row-level security.
SET LOCAL ROLE tenantry_owner;

-- The tenant of the current transaction, set by TenantTx with set_config('app.tenant_id', $1, true).
-- Missing or empty means NULL, and NULL matches no row: no tenant, no rows.
CREATE FUNCTION app.current_tenant_id() RETURNS uuid
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

-- Who is acting (a user, an API key, or support staff impersonating): for audit columns.
CREATE FUNCTION app.current_actor_id() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('app.actor_id', true), '') $$;

GRANT EXECUTE ON FUNCTION app.current_tenant_id(), app.current_actor_id() TO tenantry_app, tenantry_support;

-- Tenants are rows like any other: a tenant sees only itself. The key is named tenant_id, as on every
-- tenant-owned table, so one policy shape and one catalog test fit them all.
CREATE TABLE app.tenants (
  tenant_id          uuid PRIMARY KEY,
  name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  slug               text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
  auth0_org_id       text UNIQUE CHECK (length(auth0_org_id) BETWEEN 1 AND 128),
  stripe_customer_id text UNIQUE CHECK (length(stripe_customer_id) BETWEEN 1 AND 128),
  plan               text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'team', 'business', 'enterprise')),
  status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'closed')),
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.members (
  tenant_id     uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  member_id     uuid NOT NULL DEFAULT uuidv7(),
  auth0_user_id text NOT NULL CHECK (length(auth0_user_id) BETWEEN 1 AND 256),
  email         text CHECK (length(email) <= 320),
  role          text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, member_id),
  UNIQUE (tenant_id, auth0_user_id)
);

-- Machine access. The secret is never stored: only SHA-256 of the whole key (keys are 256-bit
-- random, so a fast hash is the right one). The prefix is random and server-chosen, so its global
-- uniqueness reveals nothing a tenant could probe for.
CREATE TABLE app.api_keys (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  key_id       uuid NOT NULL DEFAULT uuidv7(),
  prefix       text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z0-9]{12}$'),
  hash         bytea NOT NULL CHECK (length(hash) = 32),
  name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  created_by   text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz,
  PRIMARY KEY (tenant_id, key_id)
);

CREATE TABLE app.datasets (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  dataset_id   uuid NOT NULL DEFAULT uuidv7(),
  name         text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
  columns      jsonb NOT NULL DEFAULT '[]',
  text_columns text[] NOT NULL DEFAULT '{}',
  time_column  text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, dataset_id),
  UNIQUE (tenant_id, name)
);

CREATE TABLE app.records (
  tenant_id  uuid NOT NULL,
  dataset_id uuid NOT NULL,
  key        text NOT NULL CHECK (length(key) BETWEEN 1 AND 256),
  data       jsonb NOT NULL,
  version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, dataset_id, key),
  FOREIGN KEY (tenant_id, dataset_id) REFERENCES app.datasets (tenant_id, dataset_id) ON DELETE CASCADE
);

-- Row-level security: enabled and forced (the owner too), one policy for every command, both clauses.
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'members', 'api_keys', 'datasets', 'records'] LOOP
    EXECUTE format('ALTER TABLE app.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE app.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON app.%I FOR ALL '
      'USING (tenant_id = (SELECT app.current_tenant_id())) '
      'WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))', t);
  END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE ON app.tenants TO tenantry_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.members, app.api_keys, app.datasets, app.records TO tenantry_app;

-- Lookups that must run before a tenant is known. SECURITY DEFINER, so they run as the owner; the
-- owner is under forced RLS too, so it gets a read-only policy of its own on exactly the tables these
-- functions read. Nobody logs in as the owner, so only these functions (and migrations) use it.
CREATE POLICY owner_lookup ON app.tenants FOR SELECT TO tenantry_owner USING (true);
CREATE POLICY owner_lookup ON app.api_keys FOR SELECT TO tenantry_owner USING (true);

-- Auth0 organization id -> tenant.
CREATE FUNCTION app.tenant_for_auth0_org(p_org_id text)
  RETURNS TABLE (tenant_id uuid, status text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$ SELECT t.tenant_id, t.status FROM app.tenants t WHERE t.auth0_org_id = p_org_id $$;

-- API-key prefix -> tenant, key id and hash (compared in constant time by the caller).
CREATE FUNCTION app.api_key_for_prefix(p_prefix text)
  RETURNS TABLE (tenant_id uuid, key_id uuid, hash bytea, revoked boolean, tenant_status text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
  AS $$
    SELECT k.tenant_id, k.key_id, k.hash, k.revoked_at IS NOT NULL, t.status
    FROM app.api_keys k JOIN app.tenants t ON t.tenant_id = k.tenant_id
    WHERE k.prefix = p_prefix
  $$;

REVOKE EXECUTE ON FUNCTION app.tenant_for_auth0_org(text), app.api_key_for_prefix(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenant_for_auth0_org(text), app.api_key_for_prefix(text) TO tenantry_app;
