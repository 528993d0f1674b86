# Shared by smoke-test.sh and swarm-test.sh (sourced); each defines say and show_logs.

# fail MESSAGE: say why, show the stack's state and logs, exit 1 (the EXIT trap cleans up).
fail() {
    say "FAIL: $*"
    show_logs
    exit 1
}

# A command for `sh -c` inside the server container: the remote workers alive according to the
# broker's `stats --json` (fails while the server does not answer yet).
REMOTE_WORKERS_ALIVE='synth-server stats --connect tcp://127.0.0.1:5555 --json --timeout 3 | python -c "
import json, sys
s = json.load(sys.stdin)
print(sum(1 for w in s[\"workers\"][\"list\"] if not w[\"local\"]))"'

# logged_step RUN_DIR: highest step the trainer has logged in RUN_DIR/metrics.jsonl (0 before any).
logged_step() {
    [ -f "$1/metrics.jsonl" ] || { echo 0; return; }
    local step
    step=$(grep -oE '"step": ?[0-9]+' "$1/metrics.jsonl" | grep -oE '[0-9]+$' | sort -n | tail -1) || true
    echo "${step:-0}"   # a run that has logged no step yet (rows without one) counts as 0
}
