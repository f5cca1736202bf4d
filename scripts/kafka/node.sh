#!/usr/bin/env bash
# One Apache Kafka KRaft node (combined broker + controller), in the foreground.
# The one place that writes a broker's configuration: scripts/lib.sh and
# testkit both start brokers through it.
#
#   node.sh DIR NODE_ID BROKER_PORT VOTERS [key=value ...]
#
#   DIR      state of this node: server.properties, data/ (the log), logs/
#   VOTERS   controller quorum, e.g. 1@127.0.0.1:9093 or
#            1@127.0.0.1:19093,2@127.0.0.1:29093,3@127.0.0.1:39093;
#            this node's controller port is its own entry's
#   key=value  further broker settings (last wins)
#
# Environment: KAFKA_LIBS (the jars; default .fleetwatch/kafka/libs),
# KAFKA_CLUSTER_ID (every node of a cluster shares it; default: DIR/cluster.id,
# generated once), KAFKA_HEAP_OPTS (default -Xms128m -Xmx512m), JAVA (java).
#
# The storage is formatted on first start only, so a restart keeps the log.
# The script ends in `exec java`: its pid is the broker's.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
[[ $# -ge 4 ]] || { echo "usage: node.sh DIR NODE_ID BROKER_PORT VOTERS [key=value ...]" >&2; exit 64; }
DIR="$1" NODE_ID="$2" PORT="$3" VOTERS="$4"
shift 4
LIBS="${KAFKA_LIBS:-$ROOT/.fleetwatch/kafka/libs}"
JAVA="${JAVA:-java}"
[[ -d "$LIBS" ]] || { echo "error: no Kafka jars in $LIBS; run scripts/test or scripts/up once (they fetch them)" >&2; exit 69; }

CONTROLLER_PORT=""
NODES=0
IFS=',' read -r -a voter_list <<<"$VOTERS"
for v in "${voter_list[@]}"; do
    NODES=$((NODES + 1))
    if [[ "${v%%@*}" == "$NODE_ID" ]]; then
        CONTROLLER_PORT="${v##*:}"
    fi
done
[[ -n "$CONTROLLER_PORT" ]] || { echo "error: node $NODE_ID is not in the voters $VOTERS" >&2; exit 64; }
# Internal topics replicate like a production cluster's as far as the node
# count allows: RF 3 / min ISR 2 on three nodes, 1 / 1 on one.
RF=$((NODES < 3 ? NODES : 3))
MIN_ISR=$((RF > 1 ? 2 : 1))

mkdir -p "$DIR/data" "$DIR/logs"
cat >"$DIR/server.properties" <<PROPS
# Written by scripts/kafka/node.sh at every start; edit that script instead.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
default.replication.factor=$RF
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$RF
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$RF
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$RF
share.coordinator.state.topic.min.isr=$MIN_ISR
# No 3 s wait for more members before a classic group's first rebalance.
group.initial.rebalance.delay.ms=0
# A dead node is fenced in 3 s instead of 9 s, and a consumer (KIP-848)
# session may be as short as 6 s, so failover tests take seconds.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
group.consumer.min.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
# Frames are up to 4 MiB (fleetwatch_kafka producer.max_message_bytes).
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
PROPS
for kv in "$@"; do
    printf '%s\n' "$kv" >>"$DIR/server.properties"
done

CP="$LIBS/*"
tool() { "$JAVA" -Xmx128m -Dlog4j2.configurationFile="$HERE/tools-log4j2.yaml" -cp "$CP" "$@"; }

if [[ ! -f "$DIR/data/meta.properties" ]]; then
    if [[ -n "${KAFKA_CLUSTER_ID:-}" ]]; then
        printf '%s\n' "$KAFKA_CLUSTER_ID" >"$DIR/cluster.id"
    elif [[ ! -s "$DIR/cluster.id" ]]; then
        tool kafka.tools.StorageTool random-uuid >"$DIR/cluster.id"
    fi
    tool kafka.tools.StorageTool format --cluster-id "$(cat "$DIR/cluster.id")" \
        --config "$DIR/server.properties" >"$DIR/logs/format.log"
fi

# shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of flags
exec "$JAVA" ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$DIR/logs" \
    -cp "$CP" kafka.Kafka "$DIR/server.properties"
