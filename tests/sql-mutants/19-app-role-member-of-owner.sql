-- The app role made a member of the owner, so it can SET ROLE to it (cluster-wide: restored after the run).
-- expect: roles::app_role_is_unprivileged
-- expect: roles::app_role_cannot_escape_rls
-- restore: REVOKE tenantry_owner FROM tenantry_app;
GRANT tenantry_owner TO tenantry_app;
