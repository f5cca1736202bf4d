#!/usr/bin/env bash
# Shared functions for scripts/up, scripts/test and loadtest/run.sh. Source
# it; do not run it. Nothing is assumed running or installed beyond bash,
# curl and a package manager: each ensure_* installs (Debian packages when
# root, else a message naming the package) and starts what is missing,
# project-local under .fleetwatch/.
#
#   ensure_packages CMD:PKG...     apt-get install the packages of missing commands
#   ensure_kafka ROOT              the Apache Kafka jars in ROOT/.fleetwatch/kafka/libs
#   start_kafka DIR PORT LOG       a single-node KRaft broker; sets STARTED_PID
#   ensure_postgres STATE [PORT]   a PostgreSQL answering on 127.0.0.1:PORT (5432)
#   ensure_mosquitto STATE [PORT]  Mosquitto with per-vehicle credentials on PORT (1883)
#   stop_started                   stops what the ensure_*/start_* functions started
#   port_open PORT [HOST]          true if something accepts connections there
#   wait_port PORT [SECS] [HOST]   wait until it does
#   wait_http URL [SECS]           wait until URL answers 2xx
#   ensure_inference_venv ROOT     Python venv with onnxruntime; exports ORT_DYLIB_PATH

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open PORT [HOST]: bash's /dev/tcp, so no netcat is needed.
port_open() {
    local port="$1" host="${2:-127.0.0.1}"
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# wait_port PORT [SECS] [HOST]
wait_port() {
    local port="$1" secs="${2:-30}" host="${3:-127.0.0.1}" i
    for ((i = 0; i < secs * 10; i++)); do
        if port_open "$port" "$host"; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing is listening on $host:$port after ${secs}s"
}

# wait_http URL [SECS]: until the URL answers 2xx.
wait_http() {
    local url="$1" secs="${2:-60}" i
    for ((i = 0; i < secs * 4; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.25
    done
    die "$url did not answer 2xx within ${secs}s"
}

# ensure_packages CMD:PKG ...: installs the Debian package of every missing
# command (or absolute path) as root, or names them and stops.
ensure_packages() {
    local want=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || want+=("${pair#*:}")
    done
    [[ ${#want[@]} -gt 0 ]] || return 0
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing: ${want[*]}; install them (sudo apt-get install ${want[*]}) and run again"
    fi
    log "installing ${want[*]} (apt-get)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null; then
        apt-get update -q >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null \
            || die "apt-get install ${want[*]} failed"
    fi
}

# Processes the functions below started, stopped in reverse by stop_started.
STARTED_STACK=()

# stop_pid NAME PID SECS: SIGTERM, wait up to SECS, then SIGKILL.
stop_pid() {
    local name="$1" pid="$2" secs="$3" i
    kill -0 "$pid" 2>/dev/null || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop within ${secs}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# stop_started: every entry is "name secs command...", run newest first.
stop_started() {
    local i entry
    for ((i = ${#STARTED_STACK[@]} - 1; i >= 0; i--)); do
        entry="${STARTED_STACK[$i]}"
        eval "$entry" || true
    done
    STARTED_STACK=()
}

# ------------------------------------------------------------------ kafka

KAFKA_POM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka"

# ensure_kafka ROOT: Java 17+ and Maven, then the broker and tool jars the
# pom lists, copied once into ROOT/.fleetwatch/kafka/libs (again only when
# the pom changes). Exports KAFKA_LIBS.
ensure_kafka() {
    local root="$1" libs="$1/.fleetwatch/kafka/libs" stamp want
    ensure_packages java:openjdk-17-jre-headless mvn:maven
    stamp="$libs/.pom.sha256"
    want="$(sha256sum "$KAFKA_POM_DIR/pom.xml" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        log "fetching Apache Kafka from Maven Central into $libs (once)"
        rm -rf "$libs"
        mkdir -p "$libs"
        if ! mvn -B -q -Dstyle.color=never -f "$KAFKA_POM_DIR/pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$libs" >"$root/.fleetwatch/kafka/mvn.log" 2>&1; then
            tail -n 30 "$root/.fleetwatch/kafka/mvn.log" >&2
            die "mvn could not fetch the Kafka jars (scripts/kafka/pom.xml; log $root/.fleetwatch/kafka/mvn.log); is Maven Central reachable?"
        fi
        printf '%s\n' "$want" >"$stamp"
    fi
    export KAFKA_LIBS="$libs"
}

# kafka_tool CLASS ARGS...: one of Kafka's own CLI tools, e.g.
#   kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server 127.0.0.1:9092 --list
kafka_tool() {
    java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_POM_DIR/tools-log4j2.yaml" -cp "$KAFKA_LIBS/*" "$@"
}

# start_kafka DIR PORT LOGFILE [key=value ...]: a single-node KRaft broker
# (controller on PORT+1) with its log in DIR, kept across restarts; waits
# until it serves and sets STARTED_PID.
start_kafka() {
    local dir="$1" port="$2" logfile="$3" i
    shift 3
    mkdir -p "$dir" "$(dirname "$logfile")"
    # setsid: its own process group, so a terminal's Ctrl-C reaches the
    # caller first, which stops the broker last, after the services.
    setsid "$KAFKA_POM_DIR/node.sh" "$dir" 1 "$port" "1@127.0.0.1:$((port + 1))" "$@" >>"$logfile" 2>&1 &
    STARTED_PID=$!
    STARTED_STACK+=("stop_pid kafka $STARTED_PID 30")
    # Kafka opens the client port only once the broker is unfenced and serving.
    for ((i = 0; i < 900; i++)); do
        if port_open "$port"; then
            return 0
        fi
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "Kafka exited at start; see $logfile"
        fi
        sleep 0.1
    done
    die "Kafka did not serve on 127.0.0.1:$port within 90s; see $logfile"
}

# --------------------------------------------------------------- postgres

# postgres_bindir: the newest /usr/lib/postgresql/<version>/bin with initdb.
postgres_bindir() {
    local d
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [[ -x "$d/initdb" ]]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    return 0
}

# ensure_postgres STATE [PORT]: a PostgreSQL on 127.0.0.1:PORT. One already
# answering is used as it is; otherwise a cluster of this project's own in
# STATE/postgres (trust auth for local connections, superuser postgres) is
# created once and started; stop_started stops it.
ensure_postgres() {
    local state="$1" port="${2:-5432}" data="$1/postgres" bindir logfile as_user=()
    ensure_packages pg_isready:postgresql-client
    if pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
        return 0
    fi
    # Debian's server binaries live outside PATH, one directory per version.
    bindir="$(postgres_bindir)"
    if [[ -z "$bindir" ]]; then
        ensure_packages /usr/lib/postgresql/server:postgresql
        bindir="$(postgres_bindir)"
    fi
    [[ -n "$bindir" ]] || die "no PostgreSQL server binaries (apt-get install postgresql)"
    # The server refuses to run as root: as root, it runs as the postgres user.
    if [[ "$(id -u)" -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user (apt-get install postgresql)"
        as_user=(runuser -u postgres --)
    fi
    mkdir -p "$data"
    [[ ${#as_user[@]} -eq 0 ]] || chown postgres: "$data"
    chmod 700 "$data"
    if [[ ! -f "$data/PG_VERSION" ]]; then
        log "creating a PostgreSQL cluster in $data"
        "${as_user[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$state/postgres-initdb.log" 2>&1 \
            || die "initdb failed; see $state/postgres-initdb.log"
    fi
    logfile="$data/server.log"
    log "starting PostgreSQL on 127.0.0.1:$port ($data)"
    # Many tests each create a database and pools of their own.
    "${as_user[@]}" "$bindir/pg_ctl" -D "$data" -l "$logfile" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=400 ${FLEETWATCH_PG_OPTIONS:-}" start >/dev/null \
        || { tail -n 20 "$logfile" >&2; die "PostgreSQL did not start; see $logfile"; }
    STARTED_STACK+=("log 'stopping PostgreSQL'; ${as_user[*]} $bindir/pg_ctl -D $data -m fast -w stop >/dev/null")
}

# -------------------------------------------------------------- mosquitto

# ensure_mosquitto STATE [PORT]: Mosquitto on 127.0.0.1:PORT running the
# shipped config (docker/mosquitto/: no anonymous clients, a password file,
# the ACL that lets a vehicle publish only under its own id) from
# STATE/mosquitto, with the ingest bridge's login in the password file.
# Exports what callers pass on:
#   FLEETWATCH_MQTT_BRIDGE_USERNAME / _PASSWORD  the bridge's login (ingest's
#       mqtt.username / mqtt.password); _PASSWORD_FILE holds the same password
#       (for mqtt.password_file, which keeps it out of the environment)
#   FLEETWATCH_MQTT_PASSWORD_FILE / FLEETWATCH_MQTT_PID_FILE  where fleetctl
#       writes vehicles' logins and which Mosquitto it signals to reload them
# A Mosquitto this STATE started and that still runs is reused with its
# login; anything else already on PORT is used as it is, and the exports are
# left to the caller.
ensure_mosquitto() {
    local state="$1" port="${2:-1883}" dir="$1/mosquitto" shipped pid i tmp
    shipped="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docker/mosquitto"
    if port_open "$port"; then
        if [[ -f "$dir/bridge.password" && -f "$dir/mosquitto.pid" ]] \
            && kill -0 "$(cat "$dir/mosquitto.pid")" 2>/dev/null; then
            export FLEETWATCH_MQTT_BRIDGE_USERNAME=fleetwatch-ingest
            FLEETWATCH_MQTT_BRIDGE_PASSWORD="$(cat "$dir/bridge.password")"
            export FLEETWATCH_MQTT_BRIDGE_PASSWORD FLEETWATCH_MQTT_BRIDGE_PASSWORD_FILE="$dir/bridge.password"
            export FLEETWATCH_MQTT_PASSWORD_FILE="$dir/passwd" FLEETWATCH_MQTT_PID_FILE="$dir/mosquitto.pid"
        else
            log "an MQTT broker not started from $dir answers on 127.0.0.1:$port; using it as it is (the bridge's login: FLEETWATCH_MQTT_BRIDGE_USERNAME/PASSWORD)"
        fi
        return 0
    fi
    ensure_packages mosquitto:mosquitto mosquitto_passwd:mosquitto
    mkdir -p "$dir"
    # The bridge's password: made once, kept with the state.
    if [[ ! -s "$dir/bridge.password" ]]; then
        (umask 077 && printf 'fwb-%s\n' "$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')" >"$dir/bridge.password")
    fi
    # Its password file line, hashed by mosquitto_passwd -U (the password
    # never appears on a command line); vehicles' lines are kept.
    tmp="$(umask 077 && mktemp "$dir/.passwd.XXXXXX")"
    printf 'fleetwatch-ingest:%s\n' "$(cat "$dir/bridge.password")" >"$tmp"
    mosquitto_passwd -U "$tmp" || die "mosquitto_passwd could not hash the bridge's password"
    if [[ -f "$dir/passwd" ]]; then
        grep -v '^fleetwatch-ingest:' "$dir/passwd" >>"$tmp" || true
    fi
    mv "$tmp" "$dir/passwd"
    cp "$shipped/acl" "$dir/acl"
    # The shipped config with this machine's paths and port, replaced in
    # place (options after `listener` belong to that listener).
    {
        printf '# Written by scripts/lib.sh (ensure_mosquitto) at every start from %s.\n' "$shipped/mosquitto.conf"
        awk -v port="$port" -v dir="$dir" '
            $1 == "listener" { print "listener " port " 127.0.0.1"; next }
            $1 == "persistence_location" { print "persistence_location " dir "/"; next }
            $1 == "password_file" { print "password_file " dir "/passwd"; next }
            $1 == "acl_file" { print "acl_file " dir "/acl"; next }
            { print }' "$shipped/mosquitto.conf"
        printf 'pid_file %s\nlog_dest stdout\n' "$dir/mosquitto.pid"
    } >"$dir/mosquitto.conf"
    rm -f "$dir/mosquitto.pid"
    if [[ "$(id -u)" -eq 0 ]]; then
        # Mosquitto started as root drops to the mosquitto user.
        chown -R mosquitto: "$dir" 2>/dev/null || true
    fi
    log "starting Mosquitto on 127.0.0.1:$port ($dir; logins in $dir/passwd)"
    setsid mosquitto -c "$dir/mosquitto.conf" >>"$dir/mosquitto.log" 2>&1 &
    pid=$!
    STARTED_STACK+=("stop_pid mosquitto $pid 10")
    export FLEETWATCH_MQTT_BRIDGE_USERNAME=fleetwatch-ingest
    FLEETWATCH_MQTT_BRIDGE_PASSWORD="$(cat "$dir/bridge.password")"
    export FLEETWATCH_MQTT_BRIDGE_PASSWORD FLEETWATCH_MQTT_BRIDGE_PASSWORD_FILE="$dir/bridge.password"
    export FLEETWATCH_MQTT_PASSWORD_FILE="$dir/passwd" FLEETWATCH_MQTT_PID_FILE="$dir/mosquitto.pid"
    # Listening alone is not enough: fleetctl signals the pid in the pid file.
    for ((i = 0; i < 100; i++)); do
        port_open "$port" && [[ -s "$dir/mosquitto.pid" ]] && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/mosquitto.log" >&2; die "Mosquitto exited at start; see $dir/mosquitto.log"; }
        sleep 0.1
    done
    die "Mosquitto did not listen on 127.0.0.1:$port within 10s; see $dir/mosquitto.log"
}

# ensure_inference_venv ROOT: the Python venv the inference service needs at
# ROOT/.fleetwatch/venv (onnxruntime, whose wheel ships libonnxruntime.so that
# the service loads at run time; numpy, onnx and pillow for the model scripts
# and the benchmark). Exports ORT_DYLIB_PATH to the library. The packages come
# from the hashed lock services/inference/requirements.txt, installed with
# --require-hashes and wheels only (an sdist would run unpinned build code);
# the venv is brought up to date whenever the lock changes.
ensure_inference_venv() {
    local root="$1" venv="$1/.fleetwatch/venv" req="$1/services/inference/requirements.txt" lock lib
    [[ -f "$req" ]] || die "no $req"
    lock="$(sha256sum "$req" | cut -d ' ' -f 1)"
    if [[ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$lock" ]] \
        || ! "$venv/bin/python" -c 'import onnxruntime, numpy, onnx, PIL' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || die "python3 is needed for the inference venv (apt-get install python3 python3-venv)"
        log "installing the inference Python venv $venv (services/inference/requirements.txt, hashes checked)"
        [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv" || die "cannot create $venv (apt-get install python3-venv?)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --only-binary :all: -r "$req" \
            || die "pip install -r $req failed; see the output above"
        printf '%s\n' "$lock" >"$venv/.requirements.sha256"
    fi
    lib="$(find "$venv"/lib/python3*/site-packages/onnxruntime/capi -name 'libonnxruntime.so.*' 2>/dev/null | head -n 1)"
    [[ -n "$lib" ]] || die "no libonnxruntime.so.* under $venv; remove $venv and run again"
    export ORT_DYLIB_PATH="$lib"
}

# shellcheck source=scripts/s3.sh
source "$(dirname "${BASH_SOURCE[0]}")/s3.sh"
