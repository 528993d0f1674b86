#!/usr/bin/env bash
# Test of the stack on Docker Swarm, CPU variant (`docker stack deploy -c compose.yaml -c compose.cpu.yaml`).
#
#   docker/swarm-test.sh            # from anywhere; needs docker (Swarm mode) + docker compose v2
#
# Builds the images (`docker compose build`: Swarm does not build), makes this node a one-node
# swarm unless it already is one, deploys the stack under a fresh name with temporary corpus,
# soundfont and runs folders, and checks, each within SWARM_TIMEOUT_S (default 900 s):
#   1. `docker service scale <stack>_synth-worker=3`: `synth-server stats --json` shows 3 remote
#      workers alive;
#   2. scale to 1: stats shows exactly 1 remote worker (the 2 others left or timed out);
#   3. the CPU trainer has logged step >= SWARM_STEPS (default 20) in metrics.jsonl.
# Then `docker stack rm`, waits until its containers and network are gone, and leaves the swarm
# if it created it - also on failure or Ctrl-C. Exit code 0 means pass; on failure it prints the
# reason, the service tasks and the last logs. The stack publishes the broker on a free port of
# the node (Swarm's ingress listens on every interface); the test reads stats through `docker exec`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/docker/test-lib.sh"
TIMEOUT_S=${SWARM_TIMEOUT_S:-900}
STEPS=${SWARM_STEPS:-20}
STACK="stemstream-swarm-$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/stemstream-swarm.XXXXXX")
RUN_DIR="$TMP/runs/swarm"
TAG="swarmtest"
START=$(date +%s)
CREATED_SWARM=no

say() { printf '[swarm %4ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

# The stack's settings; `docker stack deploy` interpolates from its environment only (no .env).
stack_env() {
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"} ${DOCKER_CONTEXT:+DOCKER_CONTEXT="$DOCKER_CONTEXT"} \
        ${DOCKER_CONFIG:+DOCKER_CONFIG="$DOCKER_CONFIG"} \
        STEMSTREAM_TAG="$TAG" MIDI_CORPUS_DIR="$TMP/midi_corpus" SOUNDFONTS_DIR="$TMP/soundfonts" \
        RUNS_DIR="$TMP/runs" STEMSTREAM_USER="$(id -u):$(id -g)" \
        SYNTH_PORT="$BROKER_PORT" SYNTH_METRICS_PORT="$METRICS_PORT" SYNTH_WORKERS=1 SYNTH_REUSE=auto \
        SYNTH_POOL_SIZE=1024 SYNTH_EXTRA_WORKERS=0 \
        TRAIN_RUN=swarm TRAIN_MODEL=tiny TRAIN_BATCH_SIZE=4 TRAIN_STEPS=$(( STEPS + 20 )) \
        TRAIN_CHECKPOINT_EVERY=10 TRAIN_LOG_EVERY=5 "$@"
}

show_logs() {
    echo "---- docker stack ps"
    docker stack ps --no-trunc "$STACK" 2>/dev/null | head -40 || true
    local service
    for service in synth-server synth-worker trainer; do
        echo "---- last logs of ${STACK}_$service"
        docker service logs --no-task-ids --tail "${SWARM_LOG_LINES:-40}" "${STACK}_$service" 2>&1 || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    say "removing stack $STACK"
    docker stack rm "$STACK" >/dev/null 2>&1 || true
    # stack rm returns at once; wait for its containers and network before leaving the swarm
    for _ in $(seq 60); do
        [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] \
            && [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ] && break
        sleep 1
    done
    if [ "$CREATED_SWARM" = yes ]; then
        say "leaving the swarm this test created"
        docker swarm leave --force >/dev/null 2>&1 || say "note: docker swarm leave failed"
    fi
    rm -rf "$TMP" 2>/dev/null || say "note: could not remove all of $TMP"
    exit "$rc"
}

# The running synth-server container of the stack (one replica), or nothing.
server_container() {
    docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_synth-server" | head -1
}

# Remote workers alive according to the broker, or "-" when the server does not answer yet.
remote_workers_alive() {
    local id
    id=$(server_container)
    [ -n "$id" ] || { echo -; return; }
    docker exec "$id" sh -c "$REMOTE_WORKERS_ALIVE" 2>/dev/null || echo -
}

# Highest step the trainer has logged in RUN_DIR/metrics.jsonl (one row every TRAIN_LOG_EVERY steps).
trainer_step() { logged_step "$RUN_DIR"; }

# A task of the stack that failed (non-zero exit, or refused by the scheduler): fail fast.
check_tasks() {
    local bad
    bad=$(docker stack ps --format '{{.Name}} {{.CurrentState}} {{.Error}}' "$STACK" 2>/dev/null \
        | grep -E ' (Failed|Rejected)' | head -3 || true)
    [ -z "$bad" ] || fail "task failed: $bad"
}

# wait_for WHAT CONDITION_FUNCTION: poll every 3 s until the function succeeds or time runs out.
wait_for() {
    local what=$1 cond=$2 last="" now
    say "waiting for $what"
    while [ $(( $(date +%s) - START )) -lt "$TIMEOUT_S" ]; do
        check_tasks
        update_status
        now="remote workers alive: $WORKERS, trainer step: $STEP"
        [ "$now" != "$last" ] && say "$now" && last=$now
        "$cond" && return 0
        sleep 3
    done
    fail "timed out after ${TIMEOUT_S}s waiting for $what ($last)"
}

WORKERS=- STEP=0
update_status() {
    WORKERS=$(remote_workers_alive)
    STEP=$(trainer_step); STEP=${STEP:-0}
}
three_workers() { [ "$WORKERS" = 3 ]; }
one_worker() { [ "$WORKERS" = 1 ]; }
trained() { [ "$STEP" -ge "$STEPS" ]; }

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$TMP/midi_corpus" "$TMP/soundfonts" "$RUN_DIR"
    BROKER_PORT=$(free_port)
    METRICS_PORT=$(free_port)
    say "stack $STACK, temp dir $TMP, broker port $BROKER_PORT, timeout ${TIMEOUT_S}s"

    case "$(docker info --format '{{.Swarm.LocalNodeState}}')" in
        active) say "this node is already in a swarm; using it" ;;
        inactive)
            docker swarm init --advertise-addr 127.0.0.1 >/dev/null || fail "docker swarm init failed"
            CREATED_SWARM=yes
            say "swarm initialised on this node" ;;
        *) fail "node swarm state is $(docker info --format '{{.Swarm.LocalNodeState}}')" ;;
    esac

    say "building images (tag $TAG)"
    stack_env docker compose --project-directory "$ROOT" -f "$ROOT/compose.yaml" -f "$ROOT/compose.cpu.yaml" \
        build >/dev/null || fail "docker compose build failed"
    local files=(-c "$ROOT/compose.yaml" -c "$ROOT/compose.cpu.yaml")
    if [ ! -d /proc/sys/net/ipv4/vs ]; then
        # No IPVS in this kernel (some sandboxes and VMs): Swarm's virtual IPs and its ingress
        # routing mesh cannot work, so the broker gets DNS round-robin and host-mode ports.
        say "no IPVS on this node: broker with endpoint_mode dnsrr and host-mode ports"
        cat >"$TMP/no-ipvs.yaml" <<EOF
services:
  synth-server:
    ports:
      - {target: 5555, published: $BROKER_PORT, mode: host}
      - {target: 9100, published: $METRICS_PORT, mode: host}
    deploy:
      endpoint_mode: dnsrr
EOF
        files+=(-c "$TMP/no-ipvs.yaml")
    fi
    say "deploying"
    stack_env docker stack deploy --detach=true "${files[@]}" "$STACK" || fail "docker stack deploy failed"

    docker service scale --detach "${STACK}_synth-worker=3" >/dev/null || fail "scale to 3 failed"
    wait_for "3 remote workers in stats" three_workers
    docker service scale --detach "${STACK}_synth-worker=1" >/dev/null || fail "scale to 1 failed"
    wait_for "1 remote worker in stats" one_worker
    wait_for "trainer step >= $STEPS" trained
    echo "---- stats"
    docker exec "$(server_container)" synth-server stats --connect tcp://127.0.0.1:5555 || true
    echo "---- run dir"
    ls -l "$RUN_DIR"
    say "PASS"
}

main "$@"
