-- Sets up one mesh database: one login role per service that owns its own
-- schema and has no rights on any other, plus the extensions the services use.
-- Run as a superuser, once per database; safe to run again (and concurrently
-- from several databases of one cluster: roles are cluster-wide).
-- Passwords are not set here: the caller sets them (ALTER ROLE ... PASSWORD)
-- where the server asks for one.

DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['users', 'conversations', 'memory', 'scheduler', 'billing'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', 'mesh_' || service);
        EXCEPTION
            -- Another database's bootstrap created it first.
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', service, 'mesh_' || service);
        -- A schema owner may grant rights away; nobody else starts with any.
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', service);
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'mesh_' || service);
    END LOOP;
END
$$;

-- Nobody but the superuser creates objects in public: each service keeps to its schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Extensions live in public so that every schema sees their types and operators
-- (each service's search_path is "<its schema>, public").
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
