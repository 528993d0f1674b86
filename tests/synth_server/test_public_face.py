"""The stream client and the wire protocol are usable without torch (JAX, notebooks)."""
import subprocess
import sys


def test_client_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from synth_server.client import StreamClient, Batch\n"
            "from synth_server.protocol import BatchSpec, from_wire\n"
            "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
