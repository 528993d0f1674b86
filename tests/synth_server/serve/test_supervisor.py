"""Local worker processes: spawn, restart the killed, retire on scale-down, no orphans."""
import os
import signal

import pytest

from harness import alive, wait_for
from synth_server.serve.config import WorkerConfig
from synth_server.serve.supervisor import Supervisor


@pytest.mark.slow
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
    assert not [pid for pid in first + pids if alive(pid)]
