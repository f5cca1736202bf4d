#!/usr/bin/env bash
# Shared functions for scripts/up and scripts/test. Source it; do not run it.
#
#   ensure_nisshi            install the nisshi Kafka-API broker if missing
#   ensure_postgres          start the local PostgreSQL cluster if 5432 is down
#   ensure_mosquitto         start Mosquitto if 1883 is down
#   start_broker PORT STORAGE LOG   start nisshi; sets STARTED_PID
#   port_open PORT [HOST]    true if something accepts connections there
#   wait_port PORT [SECS] [HOST]    wait until it does
#   wait_http URL [SECS]     wait until URL answers 2xx
#   ensure_inference_venv ROOT   Python venv with onnxruntime; exports ORT_DYLIB_PATH

NISSHI_VERSION="${NISSHI_VERSION:-0.7.0-pre.2}"

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

nisshi_path() {
    if command -v nisshi >/dev/null 2>&1; then
        command -v nisshi
    elif [[ -x "$HOME/.cargo/bin/nisshi" ]]; then
        printf '%s\n' "$HOME/.cargo/bin/nisshi"
    else
        return 1
    fi
}

ensure_nisshi() {
    if nisshi_path >/dev/null; then
        return 0
    fi
    log "installing the nisshi broker $NISSHI_VERSION (cargo install; this takes about 10 minutes, once)"
    cargo install --locked "nisshi@$NISSHI_VERSION" --features dynostore,postgres,libsql \
        || die "installing nisshi failed; see the cargo output above"
}

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        return 0
    fi
    local version
    # shellcheck disable=SC2012  # version directories are plain numbers
    version="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)"
    [[ -n "$version" ]] || die "PostgreSQL is not running on 127.0.0.1:5432 and no local cluster was found in /etc/postgresql; start one, or point FLEETWATCH_DATABASE_URL at yours"
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start \
        || die "could not start PostgreSQL $version (pg_ctlcluster $version main start)"
    local i
    for ((i = 0; i < 100; i++)); do
        if pg_isready -q -h 127.0.0.1 -p 5432; then
            return 0
        fi
        sleep 0.1
    done
    die "PostgreSQL did not become ready on 127.0.0.1:5432"
}

ensure_mosquitto() {
    if port_open 1883; then
        return 0
    fi
    command -v mosquitto >/dev/null 2>&1 || die "Mosquitto is not running on 1883 and not installed (apt-get install mosquitto)"
    log "starting Mosquitto"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf || die "could not start Mosquitto"
    wait_port 1883 10
}

# start_broker PORT STORAGE_URL LOGFILE: starts nisshi in the background,
# waits until it accepts connections, and sets STARTED_PID.
start_broker() {
    local port="$1" storage="$2" logfile="$3" bin
    bin="$(nisshi_path)" || die "nisshi is not installed; run ensure_nisshi first"
    mkdir -p "$(dirname "$logfile")"
    # Run from a directory without a .env file: nisshi reads one, and a
    # stray STORAGE_ENGINE there would override --storage-engine. nisshi
    # resolves a sqlite path against its working directory (even an absolute
    # one), so for sqlite it runs in the database's directory with a bare name.
    local workdir
    if [[ "$storage" == sqlite://* ]]; then
        local db="${storage#sqlite://}"
        workdir="$(dirname "$db")"
        mkdir -p "$workdir"
        storage="sqlite://$(basename "$db")"
        [[ ! -e "$workdir/.env" ]] || die "$workdir/.env exists; nisshi would read it. Move it away."
    else
        workdir="$(mktemp -d)"
    fi
    (
        cd "$workdir" || exit 1
        # setsid: its own process group, so a terminal's Ctrl-C stops the
        # caller first, which stops the broker last, after the services.
        exec setsid env -u STORAGE_ENGINE "$bin" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage"
    ) >>"$logfile" 2>&1 &
    STARTED_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if port_open "$port"; then
            return 0
        fi
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            die "the broker exited at start; see $logfile"
        fi
        sleep 0.1
    done
    die "the broker did not listen on 127.0.0.1:$port within 30s; see $logfile"
}

# ensure_inference_venv ROOT: the Python venv the inference service needs at
# ROOT/.fleetwatch/venv (onnxruntime, whose wheel ships libonnxruntime.so that
# the service loads at run time; numpy, onnx and pillow for the model scripts
# and the benchmark). Exports ORT_DYLIB_PATH to the library.
INFERENCE_PIP_PACKAGES=("onnxruntime>=1.22,<2" numpy onnx pillow)
ensure_inference_venv() {
    local root="$1" venv="$1/.fleetwatch/venv" lib
    if ! "$venv/bin/python" -c 'import onnxruntime, numpy, onnx, PIL' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || die "python3 is needed for the inference venv (apt-get install python3 python3-venv)"
        log "creating the inference Python venv $venv (${INFERENCE_PIP_PACKAGES[*]})"
        python3 -m venv "$venv" || die "cannot create $venv (apt-get install python3-venv?)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${INFERENCE_PIP_PACKAGES[@]}" \
            || die "pip install ${INFERENCE_PIP_PACKAGES[*]} failed; see the output above"
    fi
    lib="$(ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1)"
    [[ -n "$lib" ]] || die "no libonnxruntime.so.* under $venv; remove $venv and run again"
    export ORT_DYLIB_PATH="$lib"
}

# shellcheck source=scripts/s3.sh
source "$(dirname "${BASH_SOURCE[0]}")/s3.sh"
