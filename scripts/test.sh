#!/usr/bin/env bash
# The test command: provisions what is missing, builds, checks formatting, lints and the configs
# that cannot run here (scripts/check_configs.sh), starts PostgreSQL, Kafka and the schema registry,
# runs every test (unit and end-to-end; the monitoring test starts Prometheus and Alertmanager
# itself), and stops the servers again whatever happens.
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

t0=$SECONDS
"$REPO_ROOT/scripts/provision.sh"
log "provision took $((SECONDS - t0)) s"

t1=$SECONDS
# The end-to-end tests run these release binaries; building them first keeps one target dir.
cargo build --release --workspace --bins
log "build took $((SECONDS - t1)) s"

t1=$SECONDS
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
log "fmt and clippy took $((SECONDS - t1)) s"
"$REPO_ROOT/scripts/check_configs.sh"

trap '"$REPO_ROOT/scripts/services.sh" stop' EXIT
"$REPO_ROOT/scripts/services.sh" start

export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
# Not SCHEMA_REGISTRY_URL: the services read that one, and tests choose when to use the registry.
export TEST_SCHEMA_REGISTRY_URL="$REGISTRY_URL"
export DATABASE_ADMIN_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"
export PGPASSWORD="$PG_PASSWORD" # for the tests' psql clean-up
t2=$SECONDS
cargo test --release --workspace "$@"
log "tests took $((SECONDS - t2)) s; total $((SECONDS - t0)) s"
