#!/usr/bin/env bash
# Local Milvus for development and tests: a real Milvus 2.3.5 standalone server from PyPI,
# on 127.0.0.1:19530 (gRPC) and 127.0.0.1:9091 (health, metrics), data in a temporary directory.
#
#   scripts/milvus.sh install   create .venv and install the server (and pymilvus, for benchmarks)
#   scripts/milvus.sh start     install if needed, start, wait until /healthz says OK
#   scripts/milvus.sh stop      stop the server started by `start` and delete its data
#   scripts/milvus.sh status    say whether it runs and answers
#
# Environment: STAMPEDE_VENV (default .venv), MILVUS_PORT (19530), MILVUS_START_TIMEOUT (300 s).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${STAMPEDE_VENV:-$root/.venv}
state=$root/.milvus
port=${MILVUS_PORT:-19530}
timeout=${MILVUS_START_TIMEOUT:-300}
milvus_version=2.3.5
pymilvus_version=2.5.18

log() { printf 'milvus.sh: %s\n' "$*" >&2; }

install() {
  if [ -x "$venv/bin/milvus-server" ] && [ -x "$venv/bin/python" ] \
     && "$venv/bin/python" -c 'import pymilvus' 2>/dev/null; then
    return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    log "python3 venv support is missing; installing python3-venv with apt-get"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  log "installing milvus==$milvus_version and pymilvus==$pymilvus_version into $venv (first time only)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "milvus==$milvus_version" "pymilvus==$pymilvus_version"
}

healthy() {
  python3 - "$@" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:9091/healthz", timeout=2) as r:
        sys.exit(0 if r.read().strip() == b"OK" else 1)
except Exception:
    sys.exit(1)
PY
}

# Whether every given port on 127.0.0.1 can be bound the way milvus-server tries it (no
# SO_REUSEADDR). A stopped server leaves its connections in TIME_WAIT for ~60 s, and while it does
# milvus-server silently moves /healthz and /metrics from 9091 to the next free port.
ports_free() {
  python3 - "$@" <<'PY' 2>/dev/null
import socket, sys
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", int(port)))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PY
}

running_pid() {
  [ -f "$state/pid" ] || return 1
  local pid
  pid=$(cat "$state/pid")
  # A zombie still answers kill -0; look at its state instead.
  [ -r "/proc/$pid/stat" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat")" != "Z" ] || return 1
  echo "$pid"
}

start() {
  install
  if pid=$(running_pid); then
    log "already running (pid $pid)"
    healthy && return 0
  fi
  if healthy; then
    log "a Milvus already answers on 127.0.0.1:9091 that this script did not start; stop it first"
    exit 1
  fi
  local waited=0
  until ports_free 9091 "$port"; do
    if [ "$waited" -ge 120 ]; then
      log "127.0.0.1:9091 or 127.0.0.1:$port is still in use after ${waited}s; what listens there:"
      ss -ltnp 2>/dev/null | grep -E ":(9091|$port) " >&2 || true
      log "stop that process (or wait for its closed connections to expire) and start again"
      exit 1
    fi
    if [ "$waited" = 0 ]; then
      log "waiting for ports 9091 and $port to be free (a server stopped less than a minute ago leaves them in TIME_WAIT)"
    fi
    sleep 2
    waited=$((waited + 2))
  done
  mkdir -p "$state"
  data=$(mktemp -d "${TMPDIR:-/tmp}/stampede-milvus.XXXXXX")
  echo "$data" > "$state/data"
  extra=()
  for c in rootCoord proxy queryCoord queryNode indexNode dataCoord dataNode; do
    extra+=(--extra-config "$c.ip=127.0.0.1")
  done
  log "starting Milvus $milvus_version on 127.0.0.1:$port (data in $data)"
  # setsid: its own process group, so `stop` can end the wrapper and the server it spawns.
  setsid "$venv/bin/milvus-server" --data "$data" --proxy-port "$port" "${extra[@]}" \
    > "$state/server.log" 2>&1 < /dev/null &
  echo $! > "$state/pid"
  waited=0
  until healthy; do
    if ! running_pid >/dev/null; then
      log "Milvus exited during start; last lines of $state/server.log:"
      tail -n 20 "$state/server.log" >&2
      exit 1
    fi
    if [ "$waited" -ge "$timeout" ]; then
      log "Milvus did not answer /healthz within ${timeout}s; last lines of $state/server.log:"
      tail -n 20 "$state/server.log" >&2
      stop
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "ready after ${waited}s (gRPC 127.0.0.1:$port)"
}

stop() {
  if pid=$(running_pid); then
    log "stopping Milvus (pid $pid)"
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      running_pid >/dev/null || break
      sleep 0.5
    done
    if running_pid >/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 2
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  fi
  # The wrapper's child may outlive it; end whatever is left of its process group.
  if [ -f "$state/pid" ]; then
    kill -KILL -- "-$(cat "$state/pid")" 2>/dev/null || true
    rm -f "$state/pid"
  fi
  if [ -f "$state/data" ]; then
    rm -rf "$(cat "$state/data")"
    rm -f "$state/data"
  fi
}

status() {
  if healthy; then
    echo "Milvus answers on 127.0.0.1:$port"
  else
    echo "Milvus is not running"
    return 1
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
