"""The broker's ROUTER socket: limits that protect the broker, optional CURVE, bind.

Limits: no frame above ``max_frame`` bytes is received (ZeroMQ drops the connection before
allocating it), each peer queues at most ``RCVHWM`` messages, sends never block
(``ROUTER_MANDATORY``: an unknown or full peer raises instead of silently dropping).
"""
from __future__ import annotations

import zmq

from synth_server.serve.config import BrokerConfig, load_server_curve

RCVHWM = 16     # messages queued per peer (legit peers have a few in flight)


def bind_router(ctx: zmq.Context, cfg: BrokerConfig, max_frame: int):
    """-> ``(socket, authenticator or None)`` bound to ``tcp://cfg.bind:cfg.port``.

    With ``cfg.curve_keys`` the socket is a CURVE server accepting only the public keys in that
    folder. Raises OSError when the address cannot be bound, ValueError for unreadable keys;
    nothing is left running then.
    """
    sock = ctx.socket(zmq.ROUTER)
    auth = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        if cfg.curve_keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = load_server_curve(cfg.curve_keys)
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=str(cfg.curve_keys))
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        port = "*" if cfg.port == 0 else str(cfg.port)
        try:
            sock.bind(f"tcp://{cfg.bind}:{port}")
        except zmq.ZMQError as exc:
            raise OSError(f"cannot bind tcp://{cfg.bind}:{port}: {exc}") from None
    except Exception:
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        raise
    return sock, auth
