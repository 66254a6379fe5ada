-- A delivery's value (what Stripe is told) made changeable after it was written.
-- expect: roles::app_role_has_exactly_the_grants_the_migrations_give
GRANT UPDATE (value) ON app.usage_deliveries TO tenantry_app;
