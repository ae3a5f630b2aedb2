#!/usr/bin/env bash
# Starts the PostgreSQL server that the store's tests use: Debian's
# `postgresql` package (installed with apt-get, as root or with sudo, when
# missing), a private cluster of its own (never the package's `main`
# cluster) listening on 127.0.0.1 only, on a fixed port ($ORCH_PG_PORT,
# default 55432), trust authentication for local connections, a role `orch`
# that may create databases and a database `orch_test` it owns. Prints one
# line, ORCH_TEST_POSTGRES=postgres://orch@127.0.0.1:PORT/orch_test, for the
# caller to export. Idempotent: a second run installs, initialises and
# creates nothing, and leaves a running server running.
#
# With --fresh, the database `orch_test` is dropped and created again
# first, so schemas earlier test runs left behind go with it.
#
# The cluster lives in $1, default ~/.cache/orch/pg. initdb refuses to run
# as root, so as root the cluster belongs to the `postgres` user and lives
# in its home (/var/lib/postgresql/orch-test): root's home is not readable
# by other users. Its log is the file `log` beside the data directory.
set -euo pipefail

port=${ORCH_PG_PORT:-55432}
fresh=0
if [ "${1:-}" = --fresh ]; then
    fresh=1
    shift
fi

need_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$1" >&2
}
need_pkg postgresql

# The newest server version installed (Debian's binaries are not on PATH).
bin=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -name pg_ctl -path '*/bin/pg_ctl' | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "postgres: no pg_ctl under /usr/lib/postgresql" >&2; exit 1; }
bin=$(dirname "$bin")

if [ "$(id -u)" -eq 0 ]; then
    home=$(getent passwd postgres | cut -d: -f6)
    dir=${1:-$home/orch-test}
    as_owner() { runuser -u postgres -- "$@"; }
    owner=postgres
else
    dir=${1:-$HOME/.cache/orch/pg}
    as_owner() { "$@"; }
    owner=$(id -un)
fi
data=$dir/data

if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown "$owner": "$dir"
    as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale >&2
    # Only TCP on the loopback address, and a socket in the data directory
    # (the package's /var/run/postgresql may not be writable by this user).
    printf '%s\n' "listen_addresses = '127.0.0.1'" "port = $port" \
        "unix_socket_directories = '$data'" "max_connections = 200" |
        as_owner tee -a "$data/postgresql.conf" >/dev/null
fi

if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/log" -w -t 60 start >&2
fi

psql() { as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -XAtq "$@"; }
if [ "$(psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'orch'")" != 1 ]; then
    psql -c "CREATE ROLE orch LOGIN CREATEDB"
fi
if [ "$fresh" = 1 ]; then
    psql -c "DROP DATABASE IF EXISTS orch_test WITH (FORCE)"
fi
if [ "$(psql -c "SELECT 1 FROM pg_database WHERE datname = 'orch_test'")" != 1 ]; then
    psql -c "CREATE DATABASE orch_test OWNER orch"
fi

echo "ORCH_TEST_POSTGRES=postgres://orch@127.0.0.1:$port/orch_test"
