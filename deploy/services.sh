#!/usr/bin/env bash
# deploy/services.sh — real PostgreSQL and a real Kafka broker for the tests, without Docker.
#
# `up [STATE_DIR]` makes sure the Debian `postgresql` package is installed (apt, as root, only
# when no initdb is found), starts a private PostgreSQL cluster (initdb'd once into
# STATE_DIR/pg, run as the unprivileged `postgres` user, loopback only, trust auth, fsync off)
# with a database and role `intent`, fetches the Apache Kafka broker jars from Maven Central
# through deploy/kafka/pom.xml into STATE_DIR/kafka/lib (cached in ~/.m2), formats fresh KRaft
# storage and starts a single-node combined broker+controller (-Xmx512m) — both on free
# 127.0.0.1 ports — then waits until PostgreSQL answers `select 1` and Kafka answers real
# requests (metadata, a produce with topic auto-creation, a consumer-group commit), and prints
# the two lines of STATE_DIR/env (export INTENT_DATABASE_URL=..., export
# INTENT_KAFKA_BOOTSTRAP=...) on stdout, so that `eval "$(deploy/services.sh up)"` or
# `. STATE_DIR/env` sets them in a shell; all else goes to stderr. Running `up` again while
# both are healthy only reprints them; a failed `up` prints the tail of the relevant log and stops what it started. `up`
# also installs promtool when it is missing (Debian package `prometheus`, as root, without
# starting or enabling its server daemon) for the tests of deploy/prometheus and /metrics.
# `down [STATE_DIR]` stops both and leaves no process behind (safe when nothing runs);
# `env [STATE_DIR]` reprints the lines when up. STATE_DIR defaults to <repo>/.services (it gets
# its own `*` .gitignore). Ports are reused across down/up while free. The PostgreSQL data
# survive `down`; Kafka starts empty on every `up`. Logs: STATE_DIR/pg/postgres.log,
# STATE_DIR/kafka/server.log and STATE_DIR/kafka/kafka.out. Env knobs: SERVICES_READY_TIMEOUT
# (seconds, default 90), SERVICES_KAFKA_HEAP (default -Xmx512m).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_POM="$REPO_ROOT/deploy/kafka/pom.xml"
READY_TIMEOUT="${SERVICES_READY_TIMEOUT:-90}"
KAFKA_HEAP="${SERVICES_KAFKA_HEAP:--Xmx512m}"
DB_NAME=intent
DB_USER=intent
DB_PASSWORD=intent

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: deploy/services.sh up|down|env [STATE_DIR]   (STATE_DIR defaults to $REPO_ROOT/.services)
EOF
    exit 2
}

CMD="${1:-}"
[[ -n "$CMD" ]] || usage
STATE_DIR="${2:-$REPO_ROOT/.services}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
ENV_FILE="$STATE_DIR/env"
KAFKA_DIR="$STATE_DIR/kafka"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"

# ---------------------------------------------------------------------------------------------
# helpers

# free_ports N: N distinct free loopback TCP ports, space separated (bind to port 0).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

port_is_free() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

tail_log() { # tail_log FILE [LINES]
    local f="$1" n="${2:-40}"
    if [[ -f "$f" ]]; then
        printf '[services] ---- last %s lines of %s ----\n' "$n" "$f" >&2
        tail -n "$n" "$f" >&2 || true
        printf '[services] ----\n' >&2
    fi
}

# python with aiokafka: the project venv if it has it.
kafka_python() {
    local py="$REPO_ROOT/.venv/bin/python"
    if [[ -x "$py" ]] && "$py" -c 'import aiokafka' >/dev/null 2>&1; then
        printf '%s' "$py"
    fi
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

find_pg_bin() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" ]] || continue
        if [[ -z "$best" ]] || [[ "$(basename "$(dirname "$d")")" -gt \
                "$(basename "$(dirname "$best")")" ]]; then
            best="$d"
        fi
    done
    printf '%s' "$best"
}

install_postgres() {
    [[ -n "$(find_pg_bin)" ]] && return 0
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb);" \
        "run as root or: sudo apt-get install -y postgresql"
    log "installing PostgreSQL from Debian packages (apt-get) ..."
    # Only the binaries are wanted: no system 'main' cluster on port 5432.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/intent-router.conf
    export DEBIAN_FRONTEND=noninteractive
    local apt_log="$STATE_DIR/apt.log"
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 postgresql; } >"$apt_log" 2>&1; then
        tail_log "$apt_log"
        die "installing PostgreSQL with apt-get failed"
    fi
    [[ -n "$(find_pg_bin)" ]] || die "postgresql installed but no initdb under /usr/lib/postgresql"
}

PG_USER=""
pg_setup_vars() {
    PG_BIN="$(find_pg_bin)"
    PG_ROOT="$STATE_DIR/pg"
    if [[ $EUID -eq 0 ]]; then
        PG_USER=postgres
        id -u "$PG_USER" >/dev/null 2>&1 || die "no 'postgres' OS user (is postgresql installed?)"
    fi
    # The cluster must be reachable by the unprivileged user, and the socket path must fit
    # into sun_path (107 bytes); otherwise keep it under /tmp, linked from STATE_DIR/pg.
    if [[ -L "$PG_ROOT" ]]; then
        PG_ROOT="$(readlink -f "$PG_ROOT")"
    elif [[ ! -d "$PG_ROOT" ]]; then
        if ! as_pg test -x "$STATE_DIR" 2>/dev/null || [[ ${#STATE_DIR} -gt 70 ]]; then
            local alt
            alt="/tmp/intent-services-pg.$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)"
            log "$STATE_DIR is not usable by '$PG_USER' (or too long a path); cluster in $alt"
            mkdir -p "$alt"
            ln -sfn "$alt" "$PG_ROOT"
            PG_ROOT="$alt"
        fi
    fi
    PG_DATA="$PG_ROOT/data"
    PG_SOCK="$PG_ROOT/run"
    PG_LOG="$PG_ROOT/postgres.log"
    PG_PORT_FILE="$PG_ROOT/port"
}

as_pg() { # run a command as the cluster's OS user (cd / so its cwd is always readable)
    if [[ -n "$PG_USER" ]]; then
        (cd / && runuser -u "$PG_USER" -- "$@" 9>&-)
    else
        (cd / && "$@" 9>&-)
    fi
}

pg_port() { cat "$PG_PORT_FILE" 2>/dev/null || true; }

pg_running() {
    [[ -f "$PG_DATA/postmaster.pid" ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_healthy() {
    local port
    port="$(pg_port)"
    [[ -n "$port" ]] && pg_running \
        && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 3 \
        && [[ "$(PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$port" \
                -U "$DB_USER" -d "$DB_NAME" -c 'select 1' 2>/dev/null)" == 1 ]]
}

pg_init() {
    [[ -f "$PG_DATA/PG_VERSION" ]] && return 0
    log "initdb $PG_DATA ($("$PG_BIN/postgres" --version))"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_ROOT"
    if [[ -n "$PG_USER" ]]; then chown "$PG_USER:" "$PG_ROOT"; fi
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$PG_ROOT/initdb.log" 2>&1 || { tail_log "$PG_ROOT/initdb.log"; die "initdb failed"; }
    cat >>"$PG_DATA/postgresql.conf" <<'EOF'

# --- deploy/services.sh: private test cluster ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
log_min_messages = warning
EOF
}

pg_start() {
    mkdir -p "$PG_SOCK"
    if [[ -n "$PG_USER" ]]; then chown "$PG_USER:" "$PG_ROOT" "$PG_SOCK"; fi
    if pg_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    local port
    port="$(pg_port)"
    if [[ -z "$port" ]] || ! port_is_free "$port"; then
        port="$(free_ports 1)"
    fi
    echo "$port" >"$PG_PORT_FILE"
    log "starting PostgreSQL on 127.0.0.1:$port"
    touch "$PG_LOG"
    if [[ -n "$PG_USER" ]]; then chown "$PG_USER:" "$PG_LOG" "$PG_PORT_FILE"; fi
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$READY_TIMEOUT" \
            -o "-p $port -k $PG_SOCK" start >/dev/null 2>&1; then
        tail_log "$PG_LOG"
        die "PostgreSQL did not start"
    fi
}

pg_db_setup() {
    local port q
    port="$(pg_port)"
    q=(env PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1
       -p "$port" -U postgres -d postgres)
    if [[ "$("${q[@]}" -c "select 1 from pg_roles where rolname = '$DB_USER'")" != 1 ]]; then
        "${q[@]}" -c "create role $DB_USER login createdb password '$DB_PASSWORD'" >&2
    fi
    # DROP DATABASE ... WITH (FORCE), which the tests use, terminates every backend on the
    # database, an autovacuum worker (owned by no role) too: that needs pg_signal_backend.
    "${q[@]}" -c "grant pg_signal_backend to $DB_USER" >&2
    if [[ "$("${q[@]}" -c "select 1 from pg_database where datname = '$DB_NAME'")" != 1 ]]; then
        "${q[@]}" -c "create database $DB_NAME owner $DB_USER" >&2
    fi
}

pg_wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until pg_healthy; do
        if ((SECONDS >= deadline)); then
            tail_log "$PG_LOG"
            die "PostgreSQL not ready after ${READY_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

pg_stop() {
    if pg_running; then
        log "stopping PostgreSQL"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1 \
            || as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 \
            || true
    fi
}

# ---------------------------------------------------------------------------------------------
# Kafka

kafka_pid() {
    local pid
    pid="$(cat "$KAFKA_PID_FILE" 2>/dev/null || true)"
    [[ -n "$pid" ]] || return 1
    # only our JVM: alive, and started on this state dir's server.properties
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$KAFKA_DIR/server.properties" \
        || return 1
    printf '%s' "$pid"
}

kafka_bootstrap() {
    local p
    p="$(cat "$KAFKA_DIR/ports" 2>/dev/null || true)"
    [[ -n "$p" ]] && printf '127.0.0.1:%s' "${p%% *}"
}

kafka_fetch_jars() {
    local lib="$KAFKA_DIR/lib" stamp want
    want="$(cksum <"$KAFKA_POM")"
    stamp="$lib/.pom-cksum"
    if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] \
            && compgen -G "$lib/kafka_2.13-*.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (Maven is needed to fetch the Kafka broker)"
    log "fetching Kafka broker jars with Maven (first run downloads them into ~/.m2) ..."
    rm -rf "$lib"
    mkdir -p "$lib"
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$lib" >"$KAFKA_DIR/mvn.log" 2>&1; then
        tail_log "$KAFKA_DIR/mvn.log"
        die "Maven could not fetch the Kafka jars"
    fi
    compgen -G "$lib/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar after Maven ran"
    echo "$want" >"$stamp"
}

kafka_write_config() { # kafka_write_config PORT CTRL_PORT
    local port="$1" ctrl="$2"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# written by deploy/services.sh — single-node KRaft broker+controller for tests
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=16777216
EOF
    cat >"$KAFKA_DIR/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_DIR/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

kafka_java() { # kafka_java HEAP ARGS... (classpath and logging set)
    local heap="$1"
    shift
    java "$heap" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_DIR" \
        -cp "$KAFKA_DIR/lib/*" "$@"
}

kafka_start() {
    kafka_stop
    local ports port ctrl cluster_id pid
    # the previous ports if still free (stable bootstrap across down/up), else new ones
    ports="$(cat "$KAFKA_DIR/ports" 2>/dev/null || true)"
    port="${ports%% *}"
    ctrl="${ports##* }"
    if [[ -z "$port" || -z "$ctrl" || "$port" == "$ctrl" ]] || ! port_is_free "$port" \
            || ! port_is_free "$ctrl"; then
        ports="$(free_ports 2)"
        port="${ports%% *}"
        ctrl="${ports##* }"
    fi
    echo "$port $ctrl" >"$KAFKA_DIR/ports"
    kafka_write_config "$port" "$ctrl"
    rm -rf "$KAFKA_DIR/data"
    : >"$KAFKA_DIR/server.log"
    : >"$KAFKA_DIR/kafka.out"
    cluster_id="$(python3 -c 'import base64, uuid
print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    if ! kafka_java -Xmx256m kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1; then
        tail_log "$KAFKA_DIR/format.log"
        die "formatting Kafka storage failed"
    fi
    log "starting Kafka $(basename "$(compgen -G "$KAFKA_DIR/lib/kafka_2.13-*.jar" | head -1)" \
        .jar | sed 's/kafka_2.13-//') on 127.0.0.1:$port (controller :$ctrl)"
    # own session: not killed by a Ctrl-C meant for the caller; `down` stops it
    setsid java "$KAFKA_HEAP" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_DIR" \
        -cp "$KAFKA_DIR/lib/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
        </dev/null >>"$KAFKA_DIR/kafka.out" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$KAFKA_PID_FILE"
}

# Real requests: metadata (admin describe_cluster), a produce with topic auto-creation, and a
# consumer-group join + commit (creates __consumer_offsets, so the first test does not pay it).
KAFKA_PROBE_AIOKAFKA='
import asyncio, sys, uuid
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

async def main(bootstrap: str, full: bool) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        if not cluster.get("brokers"):
            raise RuntimeError(f"no brokers in metadata: {cluster}")
    finally:
        await admin.close()
    if not full:
        return
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await producer.start()
    try:
        await producer.send_and_wait("services-ready", b"ready")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "services-ready", bootstrap_servers=bootstrap, group_id="services-ready",
        auto_offset_reset="earliest", enable_auto_commit=False, request_timeout_ms=10000)
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=10000)
        if not got:
            raise RuntimeError("consumer got nothing back")
        await consumer.commit()
    finally:
        await consumer.stop()

asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2] == "full"), 30))
'

# Fallback without aiokafka: a raw ApiVersions request (answered only by a started broker).
KAFKA_PROBE_RAW='
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
cid = b"services.sh"
body = struct.pack(">hhih", 18, 0, 1, len(cid)) + cid
with socket.create_connection((host, int(port)), timeout=5) as s:
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
    resp = s.recv(size, socket.MSG_WAITALL)
corr, err = struct.unpack(">ih", resp[:6])
sys.exit(0 if corr == 1 and err == 0 else 1)
'

kafka_probe() { # kafka_probe quick|full
    local bootstrap py
    bootstrap="$(kafka_bootstrap)" || return 1
    py="$(kafka_python)"
    if [[ -n "$py" ]]; then
        "$py" -c "$KAFKA_PROBE_AIOKAFKA" "$bootstrap" "$1" >>"$KAFKA_DIR/probe.log" 2>&1
    else
        python3 -c "$KAFKA_PROBE_RAW" "$bootstrap" >>"$KAFKA_DIR/probe.log" 2>&1
    fi
}

kafka_healthy() { kafka_pid >/dev/null && kafka_probe quick; }

kafka_wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    [[ -n "$(kafka_python)" ]] \
        || log "no $REPO_ROOT/.venv with aiokafka: checking Kafka with a raw ApiVersions request"
    : >"$KAFKA_DIR/probe.log"
    while :; do
        if ! kafka_pid >/dev/null; then
            tail_log "$KAFKA_DIR/kafka.out"
            tail_log "$KAFKA_DIR/server.log"
            die "the Kafka JVM exited during startup"
        fi
        if kafka_probe full; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$KAFKA_DIR/probe.log" 6
            tail_log "$KAFKA_DIR/kafka.out"
            tail_log "$KAFKA_DIR/server.log"
            die "Kafka not ready after ${READY_TIMEOUT}s"
        fi
        sleep 1
    done
}

kafka_stop() {
    local pid i
    pid="$(kafka_pid)" || { rm -f "$KAFKA_PID_FILE"; return 0; }
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "Kafka did not exit in 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$KAFKA_PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# promtool (tests check the /metrics exposition, the alert rules and the scrape config with it)

# Only the promtool binary is wanted; the Debian package `prometheus` also ships a server
# daemon, which must not start: a policy-rc.d denies service starts during the install
# (unless one already exists), recommends (node-exporter, another daemon) are skipped, and
# whatever got started anyway is stopped and disabled through the init system.
install_promtool() {
    command -v promtool >/dev/null && return 0
    if [[ $EUID -ne 0 ]]; then
        log "promtool not found and not root: the promtool tests will skip (fail under CI);" \
            "install it with: sudo apt-get install -y --no-install-recommends prometheus"
        return 0
    fi
    log "installing promtool from Debian packages (apt-get prometheus, daemon kept off) ..."
    local apt_log="$STATE_DIR/apt.log"
    (
        export DEBIAN_FRONTEND=noninteractive
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
            printf '#!/bin/sh\n# deploy/services.sh: no daemon starts during the install\n%s\n' \
                'exit 101' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
        fi
        apt-get update -qq && apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 prometheus
    ) >"$apt_log" 2>&1 || { tail_log "$apt_log"; die "installing prometheus with apt-get failed"; }
    command -v promtool >/dev/null || die "prometheus installed but no promtool on PATH"
    local pidfile=/run/prometheus/prometheus.pid # the Debian init script's
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus >>"$apt_log" 2>&1 || true
        ! systemctl is-active --quiet prometheus || die "the prometheus daemon is running"
    elif [[ -x /etc/init.d/prometheus ]]; then
        /etc/init.d/prometheus stop >>"$apt_log" 2>&1 || true
        update-rc.d prometheus disable >>"$apt_log" 2>&1 || true
    fi
    if [[ -r "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "the prometheus daemon is running after the install (pid $(cat "$pidfile"))"
    fi
    log "promtool: $(promtool --version 2>&1 | head -1)"
}

# ---------------------------------------------------------------------------------------------
# commands

# Shell lines (`. STATE_DIR/env` exports them; the values need no quoting); readers that
# parse it (Makefile, bench) take KEY=VALUE after an optional "export ".
# The Fernet key the service encrypts its secrets with on this PostgreSQL (app.crypto):
# made once and kept with the database's state, so a restart can read what it wrote.
secret_key() {
    local file="$STATE_DIR/secret.key"
    if [[ ! -s "$file" ]]; then
        (umask 077 && python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' >"$file")
    fi
    cat "$file"
}

write_env() {
    local tmp="$ENV_FILE.tmp"
    {
        printf 'export INTENT_DATABASE_URL=postgresql+asyncpg://%s:%s@127.0.0.1:%s/%s\n' \
            "$DB_USER" "$DB_PASSWORD" "$(pg_port)" "$DB_NAME"
        printf 'export INTENT_KAFKA_BOOTSTRAP=%s\n' "$(kafka_bootstrap)"
        printf 'export INTENT_SECRET_KEY=%s\n' "$(secret_key)"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
}

# A failed `up` stops what it started, so that nothing is left running (CI, make).
on_up_exit() {
    local rc=$?
    if ((rc != 0)); then
        log "up failed (exit $rc): stopping the services in $STATE_DIR"
        set +e
        kafka_stop
        [[ -n "${PG_DATA:-}" ]] && pg_stop
    fi
    return "$rc"
}

cmd_up() {
    local t0=$SECONDS
    command -v java >/dev/null || die "java not found (a JDK/JRE 17+ is needed for Kafka)"
    command -v python3 >/dev/null || die "python3 not found"
    # keep the state (jars, data, logs) out of git without touching the repo's .gitignore
    [[ -f "$STATE_DIR/.gitignore" ]] || echo '*' >"$STATE_DIR/.gitignore"
    trap on_up_exit EXIT
    install_postgres
    install_promtool
    pg_setup_vars
    mkdir -p "$KAFKA_DIR"
    if [[ -f "$ENV_FILE" ]] && pg_healthy && kafka_healthy; then
        log "already up ($STATE_DIR)"
        pg_db_setup # a cluster from an older script gets the grants it lacks
        write_env # an env file from before the export lines gets them
        cat "$ENV_FILE"
        return 0
    fi
    rm -f "$ENV_FILE"
    # Kafka first (JVM start is the slow part), PostgreSQL while it boots.
    if ! kafka_healthy; then
        kafka_fetch_jars
        kafka_start
    fi
    if ! pg_healthy; then
        pg_init
        pg_running && [[ -n "$(pg_port)" ]] || pg_start
        pg_db_setup
        pg_wait_ready
    fi
    log "PostgreSQL ready on 127.0.0.1:$(pg_port)"
    kafka_wait_ready
    log "Kafka ready on $(kafka_bootstrap) (pid $(kafka_pid))"
    write_env
    log "up in $((SECONDS - t0))s; state in $STATE_DIR"
    cat "$ENV_FILE"
    trap - EXIT
}

cmd_down() {
    rm -f "$ENV_FILE"
    kafka_stop
    local bin
    bin="$(find_pg_bin)"
    if [[ -n "$bin" ]] && { [[ -e "$STATE_DIR/pg" ]]; }; then
        if [[ $EUID -eq 0 ]]; then PG_USER=postgres; fi
        PG_BIN="$bin"
        PG_ROOT="$(readlink -f "$STATE_DIR/pg")"
        PG_DATA="$PG_ROOT/data"
        pg_stop
    fi
    log "down ($STATE_DIR)"
}

cmd_env() {
    if [[ -f "$ENV_FILE" ]] && kafka_pid >/dev/null; then
        local bin
        bin="$(find_pg_bin)"
        if [[ $EUID -eq 0 ]]; then PG_USER=postgres; fi
        PG_BIN="$bin"
        PG_ROOT="$(readlink -f "$STATE_DIR/pg")"
        PG_DATA="$PG_ROOT/data"
        if [[ -n "$bin" ]] && pg_running; then
            cat "$ENV_FILE"
            return 0
        fi
    fi
    die "services are not up in $STATE_DIR (run: deploy/services.sh up)"
}

# One command at a time per state dir.
exec 9>"$STATE_DIR/.lock"
flock 9

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    *) usage ;;
esac
