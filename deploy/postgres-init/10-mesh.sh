#!/usr/bin/env bash
# Run by the official postgres image (pgvector/pgvector:pg18 in docker-compose.yml)
# on the first start of an empty data directory, as the superuser, against the
# temporary init server (Unix socket only). The image executes this file when it
# is executable and sources it otherwise: the work runs in a subshell so that
# neither way leaks shell options or variables into the image's entrypoint.
#
#   1. /mesh/bootstrap.sql (migrations/bootstrap.sql, mounted read-only) in the
#      database POSTGRES_DB (mesh): one login role and one schema per service,
#      extensions vector and pg_trgm.
#   2. The five roles' password: MESH_DB_PASSWORD, default mesh-dev-password.
#      psql reads it from the environment (\getenv) and quotes it (:'pw'), so it
#      appears in no command line and any character is safe in SQL. (In the
#      services' postgres:// URLs, characters like @ : / % still need escaping.)
#
# Like every init script it does not run again on an existing volume: to pick up
# a new password, `ALTER ROLE` by hand or `docker compose down -v`.

mesh_init() (
    set -Eeuo pipefail

    local db="${POSTGRES_DB:-mesh}"
    local bootstrap="${MESH_BOOTSTRAP_SQL:-/mesh/bootstrap.sql}"
    export MESH_DB_PASSWORD="${MESH_DB_PASSWORD:-mesh-dev-password}"

    if [[ ! -r "$bootstrap" ]]; then
        echo "10-mesh.sh: $bootstrap is missing: mount ./migrations/bootstrap.sql there" >&2
        return 1
    fi

    local -a psql=(psql -X -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "$db")

    echo "10-mesh.sh: applying $bootstrap to database $db"
    "${psql[@]}" --quiet --file "$bootstrap"

    echo "10-mesh.sh: setting the password of mesh_users, mesh_conversations, mesh_memory, mesh_scheduler, mesh_billing"
    "${psql[@]}" --quiet <<'SQL'
\getenv pw MESH_DB_PASSWORD
ALTER ROLE mesh_users PASSWORD :'pw';
ALTER ROLE mesh_conversations PASSWORD :'pw';
ALTER ROLE mesh_memory PASSWORD :'pw';
ALTER ROLE mesh_scheduler PASSWORD :'pw';
ALTER ROLE mesh_billing PASSWORD :'pw';
SQL
)

mesh_init
