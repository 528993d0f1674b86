"""glibc malloc thresholds: batch-sized buffers reuse heap pages instead of being faulted in anew."""
import subprocess
import sys

import pytest

from harness import ROOT

SCRIPT = """
import resource, numpy as np
from synth_server.heap import keep_batch_buffers

def faults_per_buffer(n=20, nbytes=6_450_000):
    live = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(n):
        live.append(np.ones(nbytes, np.uint8))    # written: every page is touched
        if len(live) > 8:                          # a client's queue of prefetched batches
            live.pop(0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

default = faults_per_buffer()
tuned = keep_batch_buffers()
faults_per_buffer()                                # the heap grows once
print(default, tuned, faults_per_buffer())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and ru_minflt are Linux's")
def test_tuned_heap_reuses_pages_of_freed_batches():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True)
    default, tuned, after = out.stdout.split()
    assert tuned == "True"
    # glibc's defaults: each buffer is faulted in again (4 KiB pages, or 2 MiB ones where numpy's
    # huge-page advice is taken); tuned: the pages of freed buffers are reused
    assert float(default) > 100
    assert float(after) < float(default) / 20
