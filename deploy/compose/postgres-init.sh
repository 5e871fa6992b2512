#!/bin/sh
# Run by the postgres image once, on first start with an empty data directory.
# The services connect as `otako`, which owns its database but is no superuser,
# as the contract requires of the role that runs migrations.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v otako_password="$OTAKO_DB_PASSWORD" <<'SQL'
CREATE ROLE otako LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'otako_password';
CREATE DATABASE otako OWNER otako;
SQL
