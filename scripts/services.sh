#!/usr/bin/env bash
# Starts and stops the pipeline's servers on 127.0.0.1, waiting for readiness:
#   scripts/services.sh start|stop|restart|status [postgres|kafka|registry]...   (no name: all three)
#   scripts/services.sh start|stop cluster|cluster-N|kafka-secure; kill cluster-N  (for their tests)
#   scripts/services.sh start|stop monitoring   (after the three: Prometheus, Alertmanager, exporters)
# Kafka: one KRaft node (broker + controller) from the jars scripts/provision.sh fetched.
# PostgreSQL: a cluster of our own under $STATE_DIR, owned by the postgres user.
# Schema registry: Apicurio Registry, storing its schemas in PostgreSQL (database "registry"), so
# they outlive a restart; its Confluent-compatible API is $REGISTRY_URL.
# cluster: three KRaft nodes on 127.0.0.1:19092, 29092 and 39092 (controllers on N9093), topics
# replicated 3 times and min.insync.replicas=2, topics made only on request (as in production, no
# auto.create.topics.enable); cluster-N is one of them, `kill` SIGKILLs it and
# `start` brings it back on its data. kafka-secure: one node taking clients over SASL_SSL on 9194.
# Ports: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), PG_PORT (5432), REGISTRY_PORT (8081),
# REGISTRY_MANAGEMENT_PORT (9011, health), KAFKA_JMX_PORT (9404, the broker's metrics).
# monitoring: Prometheus (PROM_PORT 9090) with the repo's rules, Alertmanager (ALERTMANAGER_PORT
# 9094) sending to ALERT_WEBHOOK_URL, PostgreSQL's exporter (PG_EXPORTER_PORT 9187). Prometheus
# finds what to scrape in $STATE_DIR/monitoring/targets/JOB.json (file service discovery): written
# here for the services; detectors and sinks are added by writing detector.json and sink.json.
# Logs: $STATE_DIR/*.log
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

# Writes a KRaft node's config (broker and controller in one process) under $1:
#   kafka_configure DIR NODE_ID VOTERS LISTENERS ADVERTISED PROTOCOL_MAP REPLICATION [EXTRA_LINES]
kafka_configure() {
  local dir=$1 id=$2 voters=$3 listeners=$4 advertised=$5 protocols=$6 rf=$7 extra=${8:-}
  local min_isr=$(( rf > 1 ? 2 : 1 ))
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=${KAFKA_NUM_PARTITIONS:-4}
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
controlled.shutdown.enable=false
$extra
EOF
  log4j_config INFO > "$dir/log4j2.properties"
}

log4j_config() { # LEVEL: a console log4j2 configuration
  cat <<EOF
rootLogger.level=$1
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
EOF
}

# Kafka's command-line tools, quiet.
kafka_cli() {
  [ -f "$STATE_DIR/log4j2-tools.properties" ] || log4j_config WARN > "$STATE_DIR/log4j2-tools.properties"
  java -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$STATE_DIR/log4j2-tools.properties" "$@"
}

# Formats a node's log dir for a cluster: kafka_format DIR CLUSTER_ID [StorageTool args...]
kafka_format() {
  local dir=$1 id=$2; shift 2
  kafka_cli kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" "$@" >/dev/null
}

# Starts a formatted node in the background: kafka_launch NAME DIR HEAP [METRICS_PORT]
# With a port, the JMX exporter agent serves the broker's metrics there.
kafka_launch() {
  local name=$1 dir=$2 heap=$3 metrics=${4:-}
  local agent=()
  if [ -n "$metrics" ]; then
    [ -f "$JMX_AGENT" ] || die "the JMX exporter agent is missing ($JMX_AGENT); run scripts/provision.sh"
    agent=("-javaagent:$JMX_AGENT=127.0.0.1:$metrics:$REPO_ROOT/monitoring/kafka/jmx-exporter.yml")
  fi
  log "$name: starting (log $STATE_DIR/$name.log)"
  setsid java -Xms128m -Xmx"$heap" "${agent[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$dir/server.properties" \
    > "$STATE_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
}

# Waits until a broker answers on a plaintext port: kafka_ready NAME PORT
kafka_ready() {
  if ! wait_for "$1" 90 kafka_cli org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$2" --list; then
    tail -n 30 "$STATE_DIR/$1.log" >&2
    die "$1 did not become ready in 90 s"
  fi
}

kafka_start() {
  [ -f "$KAFKA_HOME/.complete" ] || die "Kafka jars missing in $KAFKA_HOME; run scripts/provision.sh"
  if pid_alive "$KAFKA_DIR/pid"; then log "kafka already running (pid $(cat "$KAFKA_DIR/pid"))"; return; fi
  # `start`: a fresh log dir, since the broker is a test and demo fixture, not a store of record.
  # `restart`: the same log dir, as a broker that went away and came back.
  if [ "${KEEP_KAFKA_DATA:-0}" != 1 ] || [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    rm -rf "$KAFKA_DIR"
    kafka_configure "$KAFKA_DIR" 1 "1@127.0.0.1:$KAFKA_CONTROLLER_PORT" \
      "PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT" \
      "PLAINTEXT://127.0.0.1:$KAFKA_PORT" "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" 1
    kafka_format "$KAFKA_DIR" "$(kafka_cli kafka.tools.StorageTool random-uuid)"
  fi
  kafka_launch kafka "$KAFKA_DIR" 1g "$KAFKA_JMX_PORT"
  kafka_ready kafka "$KAFKA_PORT"
}

# The 3-broker cluster: node N listens on 127.0.0.1:N9092 (clients) and N9093 (controller).
cluster_node_dir() { echo "$STATE_DIR/cluster/node-$1"; }

cluster_start() { # [NODE]: one node (started again on its data), or all three (fresh)
  [ -f "$KAFKA_HOME/.complete" ] || die "Kafka jars missing in $KAFKA_HOME; run scripts/provision.sh"
  local nodes=("$@") n dir
  if [ $# -eq 0 ]; then
    nodes=(1 2 3)
    if ! pid_alive "$(cluster_node_dir 1)/pid" && [ "${KEEP_KAFKA_DATA:-0}" != 1 ]; then
      rm -rf "$STATE_DIR/cluster"
      local voters="1@127.0.0.1:19093,2@127.0.0.1:29093,3@127.0.0.1:39093"
      local id
      id=$(kafka_cli kafka.tools.StorageTool random-uuid)
      for n in 1 2 3; do
        dir=$(cluster_node_dir "$n")
        kafka_configure "$dir" "$n" "$voters" \
          "PLAINTEXT://127.0.0.1:${n}9092,CONTROLLER://127.0.0.1:${n}9093" "PLAINTEXT://127.0.0.1:${n}9092" \
          "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" 3 \
          "auto.create.topics.enable=false"
        kafka_format "$dir" "$id"
      done
    fi
  fi
  for n in "${nodes[@]}"; do
    dir=$(cluster_node_dir "$n")
    [ -f "$dir/data/meta.properties" ] || die "cluster node $n is not formatted: start the whole cluster first"
    if pid_alive "$dir/pid"; then log "cluster-$n already running"; continue; fi
    kafka_launch "cluster-$n" "$dir" 512m
  done
  for n in "${nodes[@]}"; do kafka_ready "cluster-$n" "${n}9092"; done
}

cluster_stop() { # [NODE]
  local nodes=("$@") n
  [ $# -gt 0 ] || nodes=(1 2 3)
  for n in "${nodes[@]}"; do stop_pid "cluster-$n" "$(cluster_node_dir "$n")/pid" 30; done
}

cluster_kill() { # NODE: SIGKILL, as a crash
  local pidfile
  pidfile="$(cluster_node_dir "$1")/pid"
  pid_alive "$pidfile" || die "cluster-$1 is not running"
  kill -KILL "$(cat "$pidfile")"
  rm -f "$pidfile"
  log "cluster-$1 killed"
}

# A broker that takes clients only over SASL_SSL (SCRAM-SHA-512) on 127.0.0.1:9194, for the
# security test. $KAFKA_TLS_DIR (made by the caller) holds its keystore broker.p12, whose password
# is in keystore.password, and the SCRAM user's name and password in scram.user and
# scram.password. The broker's own traffic and the tools use a plaintext listener on 9192.
secure_dir() { echo "$STATE_DIR/kafka-secure"; }

secure_start() {
  local dir tls=${KAFKA_TLS_DIR:-}
  dir=$(secure_dir)
  if pid_alive "$dir/pid"; then log "kafka-secure already running"; return; fi
  [ -n "$tls" ] && [ -f "$tls/broker.p12" ] || die "kafka-secure needs KAFKA_TLS_DIR with broker.p12, keystore.password, scram.user, scram.password"
  local pass
  pass=$(cat "$tls/keystore.password")
  rm -rf "$dir"
  kafka_configure "$dir" 1 "1@127.0.0.1:9193" \
    "PLAINTEXT://127.0.0.1:9192,SASL_SSL://127.0.0.1:9194,CONTROLLER://127.0.0.1:9193" \
    "PLAINTEXT://127.0.0.1:9192,SASL_SSL://127.0.0.1:9194" \
    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL" 1 \
    "sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$pass
ssl.key.password=$pass"
  chmod 600 "$dir/server.properties"
  kafka_format "$dir" "$(kafka_cli kafka.tools.StorageTool random-uuid)" \
    --add-scram "SCRAM-SHA-512=[name=$(cat "$tls/scram.user"),password=$(cat "$tls/scram.password")]"
  kafka_launch kafka-secure "$dir" 512m
  kafka_ready kafka-secure 9192
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

# Monitoring, from the repo's configs (monitoring/): Prometheus and Alertmanager (Debian's, run
# as plain processes), PostgreSQL's exporter; the JMX exporter agent rides on each Kafka broker.
# Prometheus finds its targets in $MON_DIR/targets/*.json: written here for the services, and
# for the detectors and sinks by whoever runs them (the monitoring test writes its own).
monitoring_start() {
  command -v prometheus >/dev/null || die "prometheus missing; run scripts/provision.sh"
  if pid_alive "$MON_DIR/prometheus.pid"; then log "monitoring already running"; return; fi
  rm -rf "$MON_DIR"
  mkdir -p "$MON_DIR/targets" "$MON_DIR/rules" "$MON_DIR/prometheus-data" "$MON_DIR/alertmanager-data"
  # Without the compose-only DNS discovery: no compose network here to answer it.
  grep -v '# compose only' "$REPO_ROOT/monitoring/prometheus/prometheus.yml" > "$MON_DIR/prometheus.yml"
  cp "$REPO_ROOT/monitoring/prometheus/rules/"*.yml "$MON_DIR/rules/"
  sed "s#http://alert-webhook:9095/alerts#${ALERT_WEBHOOK_URL:-http://127.0.0.1:9095/alerts}#" \
    "$REPO_ROOT/monitoring/alertmanager/alertmanager.yml" > "$MON_DIR/alertmanager.yml"
  write_targets prometheus "127.0.0.1:$PROM_PORT"
  write_targets alertmanager "127.0.0.1:$ALERTMANAGER_PORT"
  write_targets kafka "127.0.0.1:$KAFKA_JMX_PORT"
  write_targets postgres "127.0.0.1:$PG_EXPORTER_PORT"
  write_targets detector
  write_targets sink

  log "postgres exporter: starting on 127.0.0.1:$PG_EXPORTER_PORT"
  DATA_SOURCE_NAME="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable" \
    setsid prometheus-postgres-exporter --web.listen-address="127.0.0.1:$PG_EXPORTER_PORT" \
    > "$STATE_DIR/postgres-exporter.log" 2>&1 < /dev/null &
  echo $! > "$MON_DIR/postgres-exporter.pid"

  log "alertmanager: starting on 127.0.0.1:$ALERTMANAGER_PORT"
  setsid prometheus-alertmanager --config.file="$MON_DIR/alertmanager.yml" --storage.path="$MON_DIR/alertmanager-data" \
    --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" --cluster.listen-address= \
    > "$STATE_DIR/alertmanager.log" 2>&1 < /dev/null &
  echo $! > "$MON_DIR/alertmanager.pid"

  log "prometheus: starting on 127.0.0.1:$PROM_PORT"
  setsid prometheus --config.file="$MON_DIR/prometheus.yml" --storage.tsdb.path="$MON_DIR/prometheus-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle \
    > "$STATE_DIR/prometheus.log" 2>&1 < /dev/null &
  echo $! > "$MON_DIR/prometheus.pid"

  wait_for "postgres exporter" 30 curl -sf "http://127.0.0.1:$PG_EXPORTER_PORT/metrics" || die "the postgres exporter did not start (see $STATE_DIR/postgres-exporter.log)"
  wait_for "alertmanager" 30 curl -sf "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" || die "alertmanager did not start (see $STATE_DIR/alertmanager.log)"
  wait_for "prometheus" 60 curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" || die "prometheus did not start (see $STATE_DIR/prometheus.log)"
}

monitoring_stop() {
  local p
  for p in prometheus alertmanager postgres-exporter; do stop_pid "$p" "$MON_DIR/$p.pid" 20; done
}

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
  local name pidfile
  for name in kafka postgres registry kafka-secure cluster/node-1 cluster/node-2 cluster/node-3 \
    monitoring/prometheus monitoring/alertmanager monitoring/postgres-exporter; do
    pidfile="$STATE_DIR/$name/pid"
    [ -d "$STATE_DIR/$name" ] || pidfile="$STATE_DIR/$name.pid"
    pid_alive "$pidfile" && echo "$name: running (pid $(cat "$pidfile"))" || echo "$name: stopped"
  done
}

cmd=${1:-}
shift || true
names=("$@")
# A bare `stop` also stops the test-only brokers, should a test have left them running.
if [ "$cmd" = stop ] && [ ${#names[@]} -eq 0 ]; then
  for n in 1 2 3; do
    if pid_alive "$(cluster_node_dir "$n")/pid"; then cluster_stop "$n"; fi
  done
  if pid_alive "$(secure_dir)/pid"; then stop_pid kafka-secure "$(secure_dir)/pid" 30; fi
  if pid_alive "$MON_DIR/prometheus.pid"; then monitoring_stop; fi
fi
# Started in this order (the registry keeps its schemas in PostgreSQL), stopped in the reverse.
[ ${#names[@]} -gt 0 ] || names=(postgres kafka registry)
reversed=()
for n in "${names[@]}"; do reversed=("$n" "${reversed[@]}"); done
start_one() {
  case $1 in
    kafka) kafka_start ;; postgres) pg_start ;; registry) registry_start ;;
    cluster) cluster_start ;; cluster-[123]) cluster_start "${1#cluster-}" ;; kafka-secure) secure_start ;;
    monitoring) monitoring_start ;;
    *) die "unknown service $1" ;;
  esac
}
stop_one() {
  case $1 in
    kafka) kafka_stop ;; postgres) pg_stop ;; registry) registry_stop ;;
    cluster) cluster_stop ;; cluster-[123]) cluster_stop "${1#cluster-}" ;; kafka-secure) stop_pid kafka-secure "$(secure_dir)/pid" 30 ;;
    monitoring) monitoring_stop ;;
    *) die "unknown service $1" ;;
  esac
}
case "$cmd" in
  start) for n in "${names[@]}"; do start_one "$n"; done ;;
  stop) for n in "${reversed[@]}"; do stop_one "$n"; done ;;
  restart) "$0" stop "${names[@]}"; KEEP_KAFKA_DATA=1 "$0" start "${names[@]}" ;;
  kill) for n in "${names[@]}"; do case $n in cluster-[123]) cluster_kill "${n#cluster-}" ;; *) die "kill takes cluster-1, cluster-2 or cluster-3" ;; esac; done ;;
  status) status ;;
  *) echo "usage: $0 start|stop|restart|status [postgres|kafka|registry|monitoring|cluster|cluster-N|kafka-secure]... | kill cluster-N" >&2; exit 2 ;;
esac
