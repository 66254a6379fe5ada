-- A SECURITY DEFINER lookup without its fixed search_path.
-- expect: catalog::every_app_table_is_isolated_by_forced_rls
ALTER FUNCTION app.api_key_for_prefix(text) RESET search_path;
