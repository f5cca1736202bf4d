#!/usr/bin/env bash
# The S3-compatible server the s3:// tests run against: versitygw (posix
# backend: a bucket is a directory, an object a file), built from the Go
# module proxy at a pinned release. Sourced by scripts/lib.sh (it uses log
# and die from there); do not run it.
#
#   ensure_s3_server ROOT   build it once into ROOT/.fleetwatch/bin; exports FLEETWATCH_S3_SERVER_BIN
#
# testkit's S3Server starts one per test (own directory, free port, bucket).

VERSITYGW_MODULE=github.com/versity/versitygw
VERSITYGW_VERSION=v1.8.0

# ensure_s3_server ROOT: ROOT/.fleetwatch/bin/versitygw at VERSITYGW_VERSION.
# The first build takes about two minutes on two cores from a clean module
# cache; afterwards this only reads the binary's embedded module version.
ensure_s3_server() {
    local bindir="$1/.fleetwatch/bin" bin
    bin="$bindir/versitygw"
    if ! _s3_server_current "$bin"; then
        command -v go >/dev/null 2>&1 \
            || die "go is needed to build the S3 test server (versitygw); install Go 1.25 or newer"
        mkdir -p "$bindir"
        log "building the S3 test server: go install $VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION (once, about 2 minutes)"
        GOBIN="$bindir" go install "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION" \
            || die "go install $VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION failed (see above); is the Go module proxy reachable (go env GOPROXY)?"
        _s3_server_current "$bin" || die "$bin is not versitygw $VERSITYGW_VERSION after go install; remove it and run again"
    fi
    export FLEETWATCH_S3_SERVER_BIN="$bin"
}

# _s3_server_current BIN: true if BIN is versitygw built from the pinned
# module version (Go embeds it), so bumping VERSITYGW_VERSION rebuilds.
_s3_server_current() {
    [[ -x "$1" ]] && command -v go >/dev/null 2>&1 \
        && go version -m "$1" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+${VERSITYGW_MODULE}[[:space:]]+${VERSITYGW_VERSION}([[:space:]]|$)"
}
