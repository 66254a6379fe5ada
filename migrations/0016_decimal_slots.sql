-- Exact decimals: a `decimal` column (numeric with a declared scale) gets the first free of eight
-- numeric slots, d1..d8, so sums and averages of money are exact (float8 sums of 0.1 are not).
-- Added at the end of the row, not rebuilt into the fixed-width block: numeric is variable-width
-- anyway, walking to it costs one length header per column before it, and a rebuild of a table
-- with every tenant's records is not a migration to run on a live system. Adding nullable columns
-- without a default rewrites nothing.
SET LOCAL ROLE tenantry_owner;

ALTER TABLE app.records
  ADD COLUMN d1 numeric, ADD COLUMN d2 numeric, ADD COLUMN d3 numeric, ADD COLUMN d4 numeric,
  ADD COLUMN d5 numeric, ADD COLUMN d6 numeric, ADD COLUMN d7 numeric, ADD COLUMN d8 numeric;
