-- A query compiled against the dataset definition a process remembers (api/query.rs) travels in
-- one flight with a call of this function, first in its transaction: it aborts the transaction,
-- before anything after it runs, unless the dataset is still that definition. A dataset deleted,
-- re-created under the same name (a new id) or whose rollups changed (every UPDATE of its row is
-- a new row version, with a new xmin) fails it with SQLSTATE TY001; the handler then reads the
-- dataset again and runs the query once more. Invoker's rights: RLS confines the lookup to the
-- transaction's tenant, so another tenant's dataset is as absent as a deleted one.
SET LOCAL ROLE tenantry_owner;

CREATE FUNCTION app.expect_dataset(p_dataset_id uuid, p_row_version text)
  RETURNS void
  LANGUAGE plpgsql
  STABLE
  SET search_path = pg_catalog, pg_temp
  AS $$
  BEGIN
    PERFORM 1 FROM app.datasets d
      WHERE d.tenant_id = (SELECT app.current_tenant_id())
        AND d.dataset_id = p_dataset_id
        AND d.xmin::text = p_row_version;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'the dataset is not the one this query was compiled against'
        USING ERRCODE = 'TY001';
    END IF;
  END
  $$;
REVOKE EXECUTE ON FUNCTION app.expect_dataset(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.expect_dataset(uuid, text) TO tenantry_app, tenantry_impersonation;
