import pytest
import zmq


@pytest.fixture
def fake_broker():
    """A bare ROUTER socket on a free loopback port: ``(socket, address)``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    ctx.destroy(linger=0)
