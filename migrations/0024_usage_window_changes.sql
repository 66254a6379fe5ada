-- Billing at scale (issue 14, item 4), 2 of 3: the meter's planner reads only the windows that
-- changed since it last planned. Every insert into the ledger notes the (meter, window) it
-- touched in app.usage_window_changes, in the same transaction (a statement trigger), and the
-- planner, under the tenant's billing lock, deletes the notes of closed windows and plans exactly
-- those windows (it puts back the note of a window it cannot bill yet; a tenant without customer
-- has its notes compacted to one per window). No note is ever updated, so ingest takes no lock
-- the planner waits on. A note whose event commits after the planner's delete is not deleted (not
-- visible to it), so it is planned next time; a window planned twice plans nothing the second
-- time (the planner compares the window's whole total with what its deliveries account for,
-- never adds the notes up). (Its own file, and short: creating the trigger holds the ledger's
-- writers until this transaction commits.)
SET LOCAL ROLE tenantry_owner;

CREATE TABLE app.usage_window_changes (
  tenant_id    uuid NOT NULL REFERENCES app.tenants (tenant_id) ON DELETE CASCADE,
  note_id      bigint GENERATED ALWAYS AS IDENTITY,
  meter        text NOT NULL,
  window_start timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, note_id)
);
CREATE INDEX usage_window_changes_due ON app.usage_window_changes (tenant_id, window_start);
ALTER TABLE app.usage_window_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.usage_window_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON app.usage_window_changes FOR ALL
  USING (tenant_id = (SELECT app.current_tenant_id()))
  WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT, DELETE ON app.usage_window_changes TO tenantry_app;

-- Invoker's rights: the writer's own role and RLS (a tenant's transaction notes its own windows).
CREATE FUNCTION app.note_usage_windows()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    INSERT INTO app.usage_window_changes (tenant_id, meter, window_start)
    SELECT DISTINCT n.tenant_id, n.meter, n.window_start FROM new_events n;
    RETURN NULL;
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.note_usage_windows() FROM PUBLIC;
CREATE TRIGGER usage_window_changes AFTER INSERT ON app.usage_events
  REFERENCING NEW TABLE AS new_events
  FOR EACH STATEMENT EXECUTE FUNCTION app.note_usage_windows();
