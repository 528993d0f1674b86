"""CPU seconds per thread of a process, from Linux /proc (the transport and broker benches)."""
from __future__ import annotations

import os
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def task_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """``{thread id: (comm, user + system CPU seconds)}`` of process ``pid``; {} where /proc is missing."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    out = {}
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue          # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = (stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / CLK)
    return out
