-- Record versions (migrations 0026, 0028): what keeping the replaced version (or, with -v trig,
-- another of app.records' triggers) costs a 500-record upsert, trigger on against off,
-- alternating, 40 rounds, in one transaction rolled back at the end. Run on the analytics
-- benchmark database (scripts/bench analytics makes it), as the superuser, naming one of its
-- tenants and datasets:
--   psql "$(scripts/pg start | sed "s|/[^/]*$|/bench_analytics_v3_200_20000|")" \
--     -v tid=<tenant id> -v did=<dataset id> -f bench/sql/record_versions_ab.sql
-- `-v trig=records_version_steps` (or `records_version_starts`) measures a version rule's
-- trigger (0028) instead of the keeping one.
\if :{?trig}
\else
  \set trig record_versions_kept
\endif
BEGIN;
-- psql variables do not reach into the DO block: passed as settings.
SELECT set_config('ab.tid', :'tid', true), set_config('ab.did', :'did', true),
       set_config('ab.trig', :'trig', true) \gset
-- The trigger writes versions as the owner, under RLS (0028): the tenant, as a request sets it.
SELECT set_config('app.tenant_id', :'tid', true) \gset
CREATE TEMP TABLE ab (variant text, iter int, ms float8);
DO $$
DECLARE t0 timestamptz; i int; v text;
  tid uuid := current_setting('ab.tid');
  did uuid := current_setting('ab.did');
  trig text := current_setting('ab.trig');
BEGIN
  FOR i IN 1..40 LOOP
    FOREACH v IN ARRAY CASE WHEN i % 2 = 0 THEN ARRAY['on','off'] ELSE ARRAY['off','on'] END LOOP
      EXECUTE format('ALTER TABLE app.records %s TRIGGER %I',
                     CASE v WHEN 'off' THEN 'DISABLE' ELSE 'ENABLE' END, trig);
      t0 := clock_timestamp();
      INSERT INTO app.records AS r (tenant_id, dataset_id, key, data)
        SELECT tid, did, 'ab-' || v || '-' || i || '-' || g, jsonb_build_object('n', g, 'note', repeat('x', 120))
        FROM generate_series(1, 500) g
      ON CONFLICT (tenant_id, dataset_id, key) DO UPDATE
        SET data = EXCLUDED.data, version = r.version + 1, updated_at = now()
        WHERE r.data IS DISTINCT FROM EXCLUDED.data;
      INSERT INTO ab VALUES (v || ' insert 500 new', i, extract(epoch FROM clock_timestamp() - t0) * 1000);
      t0 := clock_timestamp();
      INSERT INTO app.records AS r (tenant_id, dataset_id, key, data)
        SELECT tid, did, 'ab-' || v || '-' || i || '-' || g, jsonb_build_object('n', g + 1, 'note', repeat('x', 120))
        FROM generate_series(1, 500) g
      ON CONFLICT (tenant_id, dataset_id, key) DO UPDATE
        SET data = EXCLUDED.data, version = r.version + 1, updated_at = now()
        WHERE r.data IS DISTINCT FROM EXCLUDED.data;
      INSERT INTO ab VALUES (v || ' update 500 changed', i, extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
  END LOOP;
END $$;
SELECT variant, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2) AS p50_ms,
       round(avg(ms)::numeric, 2) AS mean_ms, count(*) FROM ab GROUP BY 1 ORDER BY 1;
SELECT count(*) AS versions_kept FROM app.record_versions WHERE key LIKE 'ab-%';
ROLLBACK;
