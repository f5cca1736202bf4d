#!/usr/bin/env bash
# The standard load test: brings up its own Fleetwatch stack on non-default
# ports (so it never touches a dev stack on 8080/9092/...) on a fresh
# single-node Apache Kafka (durable log, acks=all, idempotent producer), runs
# the standard scenarios, writes one JSON report per scenario to
# loadtest/reports/<date>-kafka-<scenario>.json, and stops everything.
#
#   loadtest/run.sh                         # every scenario
#   SCENARIOS="http-batch100 http-max" loadtest/run.sh
#   WARMUP=10 DURATION=30 loadtest/run.sh
#   BIN=/tmp/old-build NO_BUILD=1 TAG=before loadtest/run.sh   # A/B: other binaries
#
# Installs what is missing like scripts/up (Java + Maven and the Kafka jars,
# PostgreSQL, Mosquitto). PostgreSQL on 5432 is used if it answers, else the
# project-local one is started; Kafka and Mosquitto (anonymous, its queue
# sized for the load) run on ports of their own. Uses the database
# fleetwatch_loadtest (dropped and recreated per run) and MQTT topics under
# lt/ only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# Where the service and loader binaries come from; NO_BUILD=1 skips the build
# (to measure binaries of another commit copied aside, for a before/after).
BIN="${BIN:-$ROOT/target/release}"
NO_BUILD="${NO_BUILD:-0}"
# Added to report names, so two runs of the same scenarios can sit side by side.
TAG="${TAG:-}"
BROKER_PORT="${BROKER_PORT:-29092}"
BOOTSTRAP="127.0.0.1:$BROKER_PORT"
HTTP_PORT="${HTTP_PORT:-18080}"
GRPC_PORT="${GRPC_PORT:-15051}"
PERSIST_GRPC_PORT="${PERSIST_GRPC_PORT:-15052}"
INGEST_ADMIN="${INGEST_ADMIN:-19601}"
PERSIST_ADMIN="${PERSIST_ADMIN:-19602}"
DB_URL="${LOADTEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/fleetwatch_loadtest}"
MQTT_PREFIX="lt"
MQTT_PORT="${MQTT_PORT:-11883}"
WARMUP="${WARMUP:-10}"
DURATION="${DURATION:-25}"
DRAIN="${DRAIN:-45}"
# Broker heap: the load moves ~50 MB/s through the broker; 1 GiB keeps GC
# pauses out of the latency figures.
KAFKA_HEAP="${KAFKA_HEAP:--Xms1g -Xmx1g}"
SCENARIOS="${SCENARIOS:-http-fixed-5k http-50k grpc-50k http-70k grpc-70k mqtt-20k mqtt-25k mqtt-batch10 http-max}"
REPORTS="${LOADTEST_REPORTS:-$ROOT/loadtest/reports}"
DATE="$(date -u +%Y-%m-%d)"
WORK="$(mktemp -d /tmp/fleetwatch-loadtest.XXXXXX)"
LOGS="$WORK/logs"

# scenario_args NAME: the loader's options for one standard scenario.
scenario_args() {
    case "$1" in
        # 200 vehicles x 100 points/s = 20,000 points/s offered, 1 request per vehicle per second.
        http-batch100) echo "--protocol http --vehicles 200 --rate 100 --batch 100" ;;
        http-50k) echo "--protocol http --vehicles 250 --rate 200 --batch 100" ;;
        # Above the target, to find the ceiling: 350 vehicles x 200 points/s.
        http-70k) echo "--protocol http --vehicles 350 --rate 200 --batch 100" ;;
        grpc-70k) echo "--protocol grpc --vehicles 350 --rate 200 --batch 100 --stream-window 2" ;;
        grpc-50k) echo "--protocol grpc --vehicles 250 --rate 200 --batch 100 --stream-window 2" ;;
        grpc-chunk100) echo "--protocol grpc --vehicles 200 --rate 100 --batch 100 --stream-window 2" ;;
        # One point per MQTT message, QoS 1: 100 vehicles x 20 points/s = 2,000 messages/s offered.
        mqtt-single) echo "--protocol mqtt --vehicles 100 --rate 20 --batch 1 --mqtt 127.0.0.1:$MQTT_PORT --mqtt-topic-prefix $MQTT_PREFIX" ;;
        # Fixed 5,000 points/s, well below saturation, for latency: 50 vehicles x 100 points/s in batches of 10.
        mqtt-10k) echo "--protocol mqtt --vehicles 200 --rate 50 --batch 1 --mqtt 127.0.0.1:$MQTT_PORT --mqtt-topic-prefix $MQTT_PREFIX" ;;
        # One point per message at 20,000 messages/s: 400 vehicles x 50/s.
        mqtt-20k) echo "--protocol mqtt --vehicles 400 --rate 50 --batch 1 --mqtt 127.0.0.1:$MQTT_PORT --mqtt-topic-prefix $MQTT_PREFIX" ;;
        mqtt-25k) echo "--protocol mqtt --vehicles 500 --rate 50 --batch 1 --mqtt 127.0.0.1:$MQTT_PORT --mqtt-topic-prefix $MQTT_PREFIX" ;;
        mqtt-batch10) echo "--protocol mqtt --vehicles 200 --rate 100 --batch 10 --mqtt 127.0.0.1:$MQTT_PORT --mqtt-topic-prefix $MQTT_PREFIX" ;;
        http-fixed-5k) echo "--protocol http --vehicles 50 --rate 100 --batch 10" ;;
        # Closed loop: 32 vehicles each sending 100-point batches as fast as they are acknowledged.
        http-max) echo "--protocol http --vehicles 32 --rate 0 --batch 100" ;;
        *) die "unknown scenario $1" ;;
    esac
}

PIDS=()
NAMES=()
MOSQUITTO_PID=""

stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${NAMES[$i]}" "${PIDS[$i]}" 20
    done
    PIDS=()
    NAMES=()
}

cleanup() {
    trap - EXIT INT TERM
    stop_all
    [[ -z "$MOSQUITTO_PID" ]] || stop_pid mosquitto "$MOSQUITTO_PID" 10
    stop_started
    log "logs kept in $LOGS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in "$MQTT_PORT" "$BROKER_PORT" "$HTTP_PORT" "$GRPC_PORT" "$PERSIST_GRPC_PORT" "$INGEST_ADMIN" "$PERSIST_ADMIN"; do
    if port_open "$p"; then
        die "port $p is already in use (another load test running?)"
    fi
done

ensure_kafka "$ROOT"
ensure_postgres "$ROOT/.fleetwatch" 5432
ensure_packages mosquitto:mosquitto
mkdir -p "$LOGS" "$REPORTS"

# Mosquitto's default queue per client (1000 messages, 20 in flight) holds
# 50 ms of a 20,000 messages/s load: past that it drops QoS 1 messages it
# already acknowledged to the vehicle ("Outgoing messages are being dropped"
# in its log), which the load test then counts as lost. A production broker in
# front of Fleetwatch needs the same sizing (docs/operations.md).
cat >"$WORK/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 200000
max_inflight_messages 2048
log_dest file $LOGS/mosquitto.log
CONF
mosquitto -c "$WORK/mosquitto.conf" >>"$LOGS/mosquitto.log" 2>&1 &
MOSQUITTO_PID=$!
wait_port "$MQTT_PORT" 10 || die "mosquitto did not start on $MQTT_PORT; see $LOGS/mosquitto.log"

# Always build: cargo is incremental, and measuring stale binaries is worse
# than a few seconds of checking.
if [[ "$NO_BUILD" != 1 ]]; then
    log "building release binaries"
    cargo build --release --bins -p fleetwatch-ingest -p fleetwatch-persistence -p fleetwatch-loadtest
fi
for b in ingest persistence loadtest; do
    [[ -x "$BIN/fleetwatch-$b" ]] || die "$BIN/fleetwatch-$b is missing; build it or unset NO_BUILD"
done
LOADER="$BIN/fleetwatch-loadtest"

start_service() {
    local name="$1" admin="$2"
    shift 2
    local logfile="$LOGS/$name.log" pid i
    env "$@" "$BIN/fleetwatch-$name" >>"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    NAMES+=("$name")
    for ((i = 0; i < 240; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$admin/readyz" 2>/dev/null; then
            STARTED_PID="$pid"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logfile" >&2; die "$name exited at start; see $logfile"; }
        sleep 0.25
    done
    die "$name was not ready within 60s; see $logfile"
}

run_stack() {
    local engine=kafka broker_pid persist_pid ingest_pid
    log "Apache Kafka on $BOOTSTRAP (log $WORK/kafka)"
    KAFKA_HEAP_OPTS="$KAFKA_HEAP" start_kafka "$WORK/kafka" "$BROKER_PORT" "$LOGS/kafka.log"
    broker_pid="$STARTED_PID"
    # The broker process is java, node.sh's exec: measure it by pid.
    "$LOADER" prepare --reset --database-url "$DB_URL" --bootstrap-servers "$BOOTSTRAP"

    local objects="$WORK/objects-$engine"
    mkdir -p "$objects"
    log "[$engine] persistence"
    start_service persistence "$PERSIST_ADMIN" \
        "FLEETWATCH_PERSISTENCE__KAFKA__BOOTSTRAP_SERVERS=$BOOTSTRAP" \
        "FLEETWATCH_PERSISTENCE__DATABASE__URL=$DB_URL" \
        "FLEETWATCH_PERSISTENCE__GRPC__LISTEN=127.0.0.1:$PERSIST_GRPC_PORT" \
        "FLEETWATCH_PERSISTENCE__ADMIN__LISTEN=127.0.0.1:$PERSIST_ADMIN" \
        "FLEETWATCH_PERSISTENCE__OBJECT_STORE__URL=file://$objects"
    persist_pid="$STARTED_PID"
    log "[$engine] ingest"
    start_service ingest "$INGEST_ADMIN" \
        "FLEETWATCH_INGEST__KAFKA__BOOTSTRAP_SERVERS=$BOOTSTRAP" \
        "FLEETWATCH_INGEST__DATABASE__URL=$DB_URL" \
        "FLEETWATCH_INGEST__HTTP__LISTEN=127.0.0.1:$HTTP_PORT" \
        "FLEETWATCH_INGEST__GRPC__LISTEN=127.0.0.1:$GRPC_PORT" \
        "FLEETWATCH_INGEST__ADMIN__LISTEN=127.0.0.1:$INGEST_ADMIN" \
        "FLEETWATCH_INGEST__PERSISTENCE__GRPC_URL=http://127.0.0.1:$PERSIST_GRPC_PORT" \
        "FLEETWATCH_INGEST__MQTT__HOST=127.0.0.1" \
        "FLEETWATCH_INGEST__MQTT__PORT=$MQTT_PORT" \
        "FLEETWATCH_INGEST__MQTT__CLIENT_ID=fleetwatch-loadtest-ingest-$engine" \
        "FLEETWATCH_INGEST__MQTT__TELEMETRY_FILTERS=[\"$MQTT_PREFIX/fleet/+/telemetry\"]" \
        "FLEETWATCH_INGEST__MQTT__DETECTION_FILTERS=[\"$MQTT_PREFIX/fleet/+/detections\"]"
    ingest_pid="$STARTED_PID"

    local s
    for s in $SCENARIOS; do
        log "[$engine] scenario $s"
        # shellcheck disable=SC2046  # the scenario's options are words
        "$LOADER" run --scenario "$engine-$s${TAG:+-$TAG}" $(scenario_args "$s") \
            --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" \
            --ingest-url "http://127.0.0.1:$HTTP_PORT" --grpc-url "http://127.0.0.1:$GRPC_PORT" \
            --database-url "$DB_URL" \
            --proc "ingest=$ingest_pid" --proc "persistence=$persist_pid" --proc "broker=$broker_pid" \
            --proc "postgres=postgres" \
            --report "$REPORTS/$DATE-$engine-$s${TAG:+-$TAG}.json" \
            || log "[$engine] scenario $s failed; continuing"
    done
    stop_all
}

run_stack
"$LOADER" summarize "$REPORTS/$DATE"-*"${TAG:+-$TAG}".json
