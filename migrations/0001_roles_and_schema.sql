-- Roles, the app schema and the extensions. Runs as the migrating (admin) user; every later file
-- switches to the owner role first, so the owner owns every object.
--
-- Roles are cluster-wide, so they are created only when missing: every database in the cluster (and
-- every test database cloned from a template) shares them.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_owner') THEN
    -- Owns the schema and runs migrations; nobody logs in as it.
    CREATE ROLE tenantry_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_app') THEN
    -- What every function logs in as: DML only, always under RLS.
    CREATE ROLE tenantry_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_support') THEN
    -- Admin tooling (a later migration grants what it needs); no privileges yet.
    CREATE ROLE tenantry_support LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION NOINHERIT;
  END IF;
  -- The migrating user must be able to SET ROLE to the owner. On RDS the master user is not a
  -- superuser, so it needs the membership explicitly (without inheriting the owner's rights).
  IF NOT pg_has_role(current_user, 'tenantry_owner', 'SET') THEN
    EXECUTE format('GRANT tenantry_owner TO %I WITH INHERIT FALSE, SET TRUE', current_user);
  END IF;
END
$$;

CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

CREATE SCHEMA app AUTHORIZATION tenantry_owner;
REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO tenantry_app, tenantry_support;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Functions the owner creates are not callable by everyone unless granted one by one.
ALTER DEFAULT PRIVILEGES FOR ROLE tenantry_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
