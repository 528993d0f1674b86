#!/usr/bin/env bash
# Smoke test of the docker compose stack, CPU variant (compose.yaml + compose.cpu.yaml).
#
#   docker/smoke-test.sh            # from anywhere; needs docker + docker compose v2
#
# Builds the images, starts the stack under a fresh project name with temporary corpus, soundfont
# and runs folders (the server writes the demo corpus there), scales synth-worker to 2, and waits
# (at most SMOKE_TIMEOUT_S, default 900 s) until
#   - `synth-server stats --json` shows the 2 extra (remote) workers alive,
#   - the trainer has logged step >= SMOKE_STEPS (default 20) in metrics.jsonl and written a checkpoint.
# Then tears everything down (`down -v`, also on failure or Ctrl-C) and exits 0; on failure it
# prints the reason and the last logs and exits 1. Ports are published on 127.0.0.1 only, on
# ephemeral host ports; the test talks to the stack through `docker compose exec` only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/docker/test-lib.sh"
TIMEOUT_S=${SMOKE_TIMEOUT_S:-900}
STEPS=${SMOKE_STEPS:-20}
EXTRA_WORKERS=2
PROJECT="stemstream-smoke-$(date +%s)-$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/stemstream-smoke.XXXXXX")
ENV_FILE="$TMP/smoke.env"
RUN_DIR="$TMP/runs/smoke"
START=$(date +%s)

say() { printf '[smoke %4ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }

# docker compose with only this test's settings: no .env of the checkout, no variables of the shell
compose() {
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"} ${DOCKER_CONTEXT:+DOCKER_CONTEXT="$DOCKER_CONTEXT"} \
        ${DOCKER_CONFIG:+DOCKER_CONFIG="$DOCKER_CONFIG"} \
        docker compose --project-directory "$ROOT" -p "$PROJECT" --env-file "$ENV_FILE" \
        -f "$ROOT/compose.yaml" -f "$ROOT/compose.cpu.yaml" "$@"
}

write_env() {
    mkdir -p "$TMP/midi_corpus" "$TMP/soundfonts" "$TMP/runs"
    cat >"$ENV_FILE" <<EOF
MIDI_CORPUS_DIR=$TMP/midi_corpus
SOUNDFONTS_DIR=$TMP/soundfonts
RUNS_DIR=$TMP/runs
STEMSTREAM_USER=$(id -u):$(id -g)
SYNTH_PUBLISH=127.0.0.1
SYNTH_PORT=0
SYNTH_METRICS_PORT=0
SYNTH_WORKERS=1
SYNTH_REUSE=auto
SYNTH_POOL_SIZE=1024
TRAIN_RUN=smoke
TRAIN_MODEL=tiny
TRAIN_LOSS=mae
TRAIN_BATCH_SIZE=4
TRAIN_STEPS=$(( STEPS + 20 ))
TRAIN_CHECKPOINT_EVERY=10
TRAIN_LOG_EVERY=5
EOF
}

show_logs() {
    echo "---- docker compose ps -a"
    compose ps -a || true
    echo "---- last logs"
    compose logs --no-color --tail "${SMOKE_LOG_LINES:-60}" || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    say "tearing down project $PROJECT"
    compose down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    rm -rf "$TMP" 2>/dev/null || say "note: could not remove all of $TMP"
    exit "$rc"
}

# Remote workers alive according to the broker, or "-" when the server does not answer yet.
remote_workers_alive() {
    compose exec -T synth-server sh -c "$REMOTE_WORKERS_ALIVE" 2>/dev/null || echo -
}

# Highest step the trainer has logged in RUN_DIR/metrics.jsonl (one row every TRAIN_LOG_EVERY steps).
trainer_step() { logged_step "$RUN_DIR"; }

checkpoint_written() {
    compgen -G "$RUN_DIR/*.pt" >/dev/null
}

# Any container that restarted (crashed) or exited with an error: fail fast.
check_containers() {
    local id name state code restarts
    for id in $(compose ps -aq); do
        read -r name state code restarts < <(docker inspect -f \
            '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$id")
        if [ "$restarts" != 0 ] || { [ "$state" = exited ] && [ "$code" != 0 ]; }; then
            fail "container ${name#/} is $state (exit code $code, restarts $restarts)"
        fi
    done
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    write_env
    say "project $PROJECT, temp dir $TMP, timeout ${TIMEOUT_S}s"
    say "building images"
    local t0=$(date +%s)
    compose build || fail "docker compose build failed"
    say "images built in $(( $(date +%s) - t0 ))s"
    compose up -d --scale synth-worker="$EXTRA_WORKERS" || fail "docker compose up failed"
    say "stack started; waiting for $EXTRA_WORKERS extra workers, trainer step >= $STEPS and a checkpoint"
    local workers=- step=0 ckpt=no last=""
    while [ $(( $(date +%s) - START )) -lt "$TIMEOUT_S" ]; do
        check_containers
        workers=$(remote_workers_alive)
        step=$(trainer_step); step=${step:-0}
        checkpoint_written && ckpt=yes || ckpt=no
        local now="extra workers alive: $workers, trainer step: $step, checkpoint: $ckpt"
        [ "$now" != "$last" ] && say "$now" && last=$now
        if [ "$workers" != - ] && [ "$workers" -ge "$EXTRA_WORKERS" ] && [ "$step" -ge "$STEPS" ] \
            && [ "$ckpt" = yes ]; then
            echo "---- stats"
            compose exec -T synth-server synth-server stats --connect tcp://127.0.0.1:5555 || true
            echo "---- run dir"
            ls -l "$RUN_DIR"
            say "PASS"
            return 0
        fi
        sleep 5
    done
    fail "timed out after ${TIMEOUT_S}s ($last)"
}

main "$@"
