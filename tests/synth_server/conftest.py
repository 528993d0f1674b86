"""Fixtures of the synth_server tests (the shared ones are in tests/conftest.py)."""
import pytest
import zmq


@pytest.fixture
def fake_broker(zmq_ctx):
    """A bare ROUTER socket on a free loopback port: ``(socket, address)``."""
    sock = zmq_ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"
