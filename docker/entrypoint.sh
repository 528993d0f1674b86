#!/bin/sh
# Entry point of the stemstream images: fits the command to what the mounted folders hold, then
# runs it (exec, so it gets the signals).
#
# - `synth-server serve|worker ...`: adds `--soundfont /soundfonts` when the mounted /soundfonts
#   folder (./soundfonts on the host) holds .sf2 files and no --soundfont was given; otherwise
#   the system soundfont (fluid-soundfont-gm) is used.
# Everything else runs unchanged.
set -eu

say() { echo "stemstream-entrypoint: $*" >&2; }

has_sf2() {
    for f in /soundfonts/*.sf2 /soundfonts/*.SF2; do
        [ -f "$f" ] && return 0
    done
    return 1
}

has_flag() {  # has_flag FLAG ARGS...: FLAG or FLAG=... among ARGS
    flag=$1; shift
    for arg in "$@"; do
        case "$arg" in "$flag"|"$flag"=*) return 0 ;; esac
    done
    return 1
}

if [ "${1:-}" = synth-server ] && { [ "${2:-}" = serve ] || [ "${2:-}" = worker ]; } \
    && ! has_flag --soundfont "$@" && has_sf2; then
    say "using the soundfonts in /soundfonts"
    set -- "$@" --soundfont /soundfonts
fi

exec "$@"
