"""Local worker processes: spawn, restart the killed, retire on scale-down, no orphans."""
import os
import signal
import time

from synth_server.serve.config import WorkerConfig
from synth_server.serve.supervisor import Supervisor


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_spawn_restart_scale_down_and_shutdown():
    # nothing listens at this address: the workers keep saying hello, which is all we need here
    sup = Supervisor(WorkerConfig(connect="tcp://127.0.0.1:9", heartbeat_s=0.2, parent_pid=os.getpid()),
                     grace_s=3.0)
    try:
        sup.scale_to(2)
        assert sup.target == 2 and wait_for(lambda: sup.alive() == 2)
        assert sup.owns("local-0.1") and sup.owns("local-1.1")
        first = sup.pids()
        os.kill(first[0], signal.SIGKILL)
        assert wait_for(lambda: sup.check() or sup.restarts == 1)
        assert sup.restarts == 1 and sup.owns("local-0.2") and not sup.owns("local-0.1")
        assert wait_for(lambda: sup.alive() == 2)
        sup.scale_to(1)
        assert sup.target == 1
        assert wait_for(lambda: (sup.check(), len(sup.pids()) == 1)[1])   # retired one exits on SIGTERM
        pids = sup.pids()
    finally:
        sup.shutdown()
    assert sup.pids() == []
    for pid in first + pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
