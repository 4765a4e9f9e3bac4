#!/usr/bin/env bash
# Starts and stops the pipeline's servers on 127.0.0.1, waiting for readiness:
#   scripts/services.sh start|stop|restart|status [postgres|kafka|registry]...   (no name: all three)
# Kafka: one KRaft node (broker + controller) from the jars scripts/provision.sh fetched.
# PostgreSQL: a cluster of our own under $STATE_DIR, owned by the postgres user.
# Schema registry: Apicurio Registry, storing its schemas in PostgreSQL (database "registry"), so
# they outlive a restart; its Confluent-compatible API is $REGISTRY_URL.
# Ports: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), PG_PORT (5432), REGISTRY_PORT (8081),
# REGISTRY_MANAGEMENT_PORT (9011, health). Logs: $STATE_DIR/*.log
set -euo pipefail
source "$(dirname "$0")/lib.sh"

KAFKA_DIR="$STATE_DIR/kafka"
PG_DIR="$STATE_DIR/postgres"
REGISTRY_DIR="$STATE_DIR/registry"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # description, seconds, command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
  log "$what is ready"
}

kafka_cli() { java -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-tools.properties" "$@"; }

kafka_start() {
  [ -f "$KAFKA_HOME/.complete" ] || die "Kafka jars missing in $KAFKA_HOME; run scripts/provision.sh"
  if pid_alive "$KAFKA_DIR/pid"; then log "kafka already running (pid $(cat "$KAFKA_DIR/pid"))"; return; fi
  # `start`: a fresh log dir, since the broker is a test and demo fixture, not a store of record.
  # `restart`: the same log dir, as a broker that went away and came back.
  if [ "${KEEP_KAFKA_DATA:-0}" = 1 ] && [ -f "$KAFKA_DIR/data/meta.properties" ]; then
    kafka_launch
    return
  fi
  rm -rf "$KAFKA_DIR"
  mkdir -p "$KAFKA_DIR/data"
  cat > "$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=${KAFKA_NUM_PARTITIONS:-4}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
controlled.shutdown.enable=false
EOF
  for f in log4j2 log4j2-tools; do
    cat > "$KAFKA_DIR/$f.properties" <<EOF
rootLogger.level=${f/log4j2-tools/WARN}
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
EOF
  done
  sed -i 's/^rootLogger.level=log4j2$/rootLogger.level=INFO/' "$KAFKA_DIR/log4j2.properties"
  local cluster_id
  cluster_id=$(kafka_cli kafka.tools.StorageTool random-uuid)
  kafka_cli kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >/dev/null
  kafka_launch
}

kafka_launch() {
  log "kafka: starting on 127.0.0.1:$KAFKA_PORT (log $STATE_DIR/kafka.log)"
  setsid java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    > "$STATE_DIR/kafka.log" 2>&1 < /dev/null &
  echo $! > "$KAFKA_DIR/pid"
  if ! wait_for "kafka" 90 kafka_cli org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list; then
    tail -n 30 "$STATE_DIR/kafka.log" >&2
    die "kafka did not become ready in 90 s"
  fi
}

pg_start() {
  local bin
  bin=$(pg_bin)
  if pid_alive "$PG_DIR/pid"; then log "postgres already running (pid $(cat "$PG_DIR/pid"))"; return; fi
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    mkdir -p "$PG_DIR"
    chown postgres: "$PG_DIR"
    local pwfile="$PG_DIR/pw"
    echo "$PG_PASSWORD" > "$pwfile"; chown postgres: "$pwfile"
    # The superuser is the project's user; the password is a local test default (PG_PASSWORD).
    runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" -U "$PG_USER" --pwfile="$pwfile" \
      -A scram-sha-256 -E UTF8 --locale=C.UTF-8 > "$STATE_DIR/postgres-initdb.log"
    rm -f "$pwfile"
  fi
  log "postgres: starting on 127.0.0.1:$PG_PORT (log $STATE_DIR/postgres.log)"
  touch "$STATE_DIR/postgres.log"; chown postgres: "$STATE_DIR/postgres.log"
  runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -l "$STATE_DIR/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=200" start >/dev/null
  head -n 1 "$PG_DIR/data/postmaster.pid" > "$PG_DIR/pid"
  wait_for "postgres" 60 env PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" \
    -d postgres -Atc "select 1" || die "postgres did not become ready"
  pg_database "$PG_DB"
}

pg_database() { # creates the database $1 if it is missing
  PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -Atc \
    "select 1 from pg_database where datname = '$1'" | grep -q 1 && return
  PGPASSWORD="$PG_PASSWORD" psql -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -c "create database \"$1\""
  log "postgres: created database $1"
}

registry_start() {
  [ -f "$APICURIO_HOME/.complete" ] || die "Apicurio Registry missing in $APICURIO_HOME; run scripts/provision.sh"
  if pid_alive "$REGISTRY_DIR/pid"; then log "registry already running (pid $(cat "$REGISTRY_DIR/pid"))"; return; fi
  local java
  java=$(java21) || die "no Java 21+ for the schema registry; run scripts/provision.sh"
  pid_alive "$PG_DIR/pid" || die "the schema registry stores its schemas in PostgreSQL: start postgres first"
  pg_database registry
  mkdir -p "$REGISTRY_DIR"
  log "registry: starting on 127.0.0.1:$REGISTRY_PORT (log $STATE_DIR/registry.log)"
  # Settings by environment (Quarkus reads APICURIO_* as apicurio.*), so the password is not on
  # the command line. A small pool: the default holds 20 connections open.
  (
    cd "$REGISTRY_DIR"
    export APICURIO_STORAGE_KIND=sql APICURIO_STORAGE_SQL_KIND=postgresql \
      APICURIO_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$PG_PORT/registry" \
      APICURIO_DATASOURCE_USERNAME="$PG_USER" APICURIO_DATASOURCE_PASSWORD="$PG_PASSWORD" \
      APICURIO_DATASOURCE_JDBC_INITIAL_SIZE=1 APICURIO_DATASOURCE_JDBC_MIN_SIZE=1 APICURIO_DATASOURCE_JDBC_MAX_SIZE=5 \
      QUARKUS_HTTP_HOST=127.0.0.1 QUARKUS_HTTP_PORT="$REGISTRY_PORT" \
      QUARKUS_MANAGEMENT_HOST=127.0.0.1 QUARKUS_MANAGEMENT_PORT="$REGISTRY_MANAGEMENT_PORT"
    exec setsid "$java" -Xms64m -Xmx512m -jar "$APICURIO_HOME/quarkus-run.jar" > "$STATE_DIR/registry.log" 2>&1 < /dev/null
  ) &
  echo $! > "$REGISTRY_DIR/pid"
  if ! wait_for "registry" 120 curl -sf "http://127.0.0.1:$REGISTRY_MANAGEMENT_PORT/health/ready"; then
    tail -n 30 "$STATE_DIR/registry.log" >&2
    die "the schema registry did not become ready in 120 s"
  fi
}

registry_stop() { stop_pid registry "$REGISTRY_DIR/pid" 30; }

stop_pid() { # name, pid file, seconds before SIGKILL
  local name=$1 pidfile=$2 secs=$3
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; log "$name not running"; return; fi
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + secs))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop in $secs s; killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "$name stopped"
}

kafka_stop() { stop_pid kafka "$KAFKA_DIR/pid" 30; }

pg_stop() {
  if pid_alive "$PG_DIR/pid"; then
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null || true
  fi
  stop_pid postgres "$PG_DIR/pid" 10
}

status() {
  local name dir
  for name in kafka postgres registry; do
    dir="$STATE_DIR/$name"
    pid_alive "$dir/pid" && echo "$name: running (pid $(cat "$dir/pid"))" || echo "$name: stopped"
  done
}

cmd=${1:-}
shift || true
names=("$@")
# Started in this order (the registry keeps its schemas in PostgreSQL), stopped in the reverse.
[ ${#names[@]} -gt 0 ] || names=(postgres kafka registry)
reversed=()
for n in "${names[@]}"; do reversed=("$n" "${reversed[@]}"); done
case "$cmd" in
  start) for n in "${names[@]}"; do case $n in kafka) kafka_start ;; postgres) pg_start ;; registry) registry_start ;; *) die "unknown service $n" ;; esac; done ;;
  stop) for n in "${reversed[@]}"; do case $n in kafka) kafka_stop ;; postgres) pg_stop ;; registry) registry_stop ;; *) die "unknown service $n" ;; esac; done ;;
  restart) "$0" stop "${names[@]}"; KEEP_KAFKA_DATA=1 "$0" start "${names[@]}" ;;
  status) status ;;
  *) echo "usage: $0 start|stop|restart|status [postgres|kafka|registry]..." >&2; exit 2 ;;
esac
