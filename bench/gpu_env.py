"""What machine a GPU bench run saw: the box, torch and CUDA, the GPU, the bundle, and which
libfluidsynth the bundle's pyfluidsynth loads (``gpu_bench.environment`` in the result JSON)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

# which libfluidsynth pyfluidsynth loaded, and every shared object mapped after that
FLUIDSYNTH_CHECK = ("import fluidsynth, json; print(json.dumps({'lib': fluidsynth.lib, 'mapped': sorted("
                    "{l.split()[-1] for l in open('/proc/self/maps') if '.so' in l})}))")


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                               "power.limit", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def environment(soundfont: Path, manifest: dict, install: dict) -> dict:
    """The box, the software and the bundle, as this run saw them."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cores": len(os.sched_getaffinity(0)), "glibc": os.confstr("CS_GNU_LIBC_VERSION"),
           "host": platform.node(), "nvidia_smi": _nvidia_smi(), "bundle": {
               k: manifest.get(k) for k in ("commit", "built", "source", "glibc_min", "mib")},
           "wheels_installed": install.get("installed"), "wheels_present": install.get("present")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
    # in a child: this process compiles in part 1 and keeps its loaded libraries clean until then.
    # System copies of bundled sonames are those Python had loaded itself (libffi, liblzma, ...).
    check = subprocess.run([sys.executable, "-c", FLUIDSYNTH_CHECK], capture_output=True, text=True, timeout=60)
    if check.returncode == 0:
        seen = json.loads(check.stdout)
        bundled = (soundfont.parents[1] / "lib" / "LOAD_ORDER").read_text().split()
        env["fluidsynth_lib"] = seen["lib"]
        env["fluidsynth_system_copies"] = [p for p in seen["mapped"] if any(
            Path(p).name.startswith(name) for name in bundled) and not p.startswith(str(soundfont.parents[1]))]
    else:                                           # parts 2 and 3 will fail; part 1 still runs
        env["fluidsynth_error"] = check.stderr.strip()[-600:]
    return env
