-- A record's replaced versions are its history, which answers cite: only the update trigger
-- writes them, and only a record's (or its dataset's) deletion removes them, by the foreign key.
-- The trigger runs as the owner (SECURITY DEFINER with a fixed search_path), which forced RLS
-- still confines to the writer's tenant, and the app role keeps SELECT alone: a bug or a
-- compromised process with the app role's connection can no longer forge or erase a version.
-- (A foreign key's cascade runs as the referencing table's owner, so deletes still take their
-- versions with them.)
SET LOCAL ROLE tenantry_owner;

ALTER FUNCTION app.keep_record_versions() SECURITY DEFINER;
REVOKE INSERT, DELETE ON app.record_versions FROM tenantry_app;
