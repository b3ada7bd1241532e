#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the integration tests.
# The machine normally has PostgreSQL 15 running; start it if it is down, install it if it is missing.
set -euo pipefail
HOST=${TURNLEDGER_PG_HOST:-127.0.0.1}
PORT=${TURNLEDGER_PG_PORT:-5432}

ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$HOST" -p "$PORT"; }

# PgBouncer for tests/integration/test_pgbouncer.py (it starts its own, on a free port; skipped without it).
# Best effort: the rest of the suite does not need it.
if ! command -v pgbouncer >/dev/null 2>&1 && ! [ -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ]; then
    echo "ensure-postgres: installing PgBouncer from Debian's packages" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
        || echo "ensure-postgres: could not install PgBouncer; its tests will be skipped" >&2
fi

if ready; then exit 0; fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure-postgres: PostgreSQL is not installed; installing it from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1)
if [ -z "$version" ]; then
    echo "ensure-postgres: no PostgreSQL cluster found under /etc/postgresql" >&2
    exit 1
fi
echo "ensure-postgres: starting PostgreSQL $version" >&2
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true

for _ in $(seq 1 60); do
    if ready; then break; fi
    sleep 0.5
done
ready || { echo "ensure-postgres: PostgreSQL did not come up on $HOST:$PORT" >&2; exit 1; }

# Tests connect as postgres with trust auth over TCP, as on this machine kind. A freshly installed
# cluster uses scram for TCP; make loopback trusted so the suite needs no password.
hba=/etc/postgresql/$version/main/pg_hba.conf
if [ -f "$hba" ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    if ! psql -h "$HOST" -p "$PORT" -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; then
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
fi
