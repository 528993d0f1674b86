"""A running `serve` answers fixed-set requests: rendered once, cached, the same audio every time."""
import time

import numpy as np
import pytest
import zmq

from synth_server.fixed_set import fetch_fixed_set
from synth_server.protocol import decode, encode
from synth_server.synth.corpus import build_index
from synth_server.config import CorpusConfig


@pytest.fixture
def served(tmp_path, busy_midi, serve):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):          # two songs cannot fill three splits: one stays empty
        busy_midi(5.0, i).write(str(corpus / f"song{i}.mid"))
    splits = {s.split for s in build_index(CorpusConfig(root=corpus, jobs=1)).eligible()}
    proc = serve("--corpus", corpus, "--workers", 0, "--pool-size", 64, "--target", 1024, "--context", 256,
                 "--split", sorted(splits)[0], "--jobs", 1)
    return proc.address, splits


def test_fixed_set_is_rendered_once_and_cached(served):
    address, splits = served
    split = sorted(splits)[0]
    first = fetch_fixed_set(address, split, 3, 0.5, seed=2, timeout=120)
    assert first.stems.shape == (3, 4, 22050) and first.stem_names == ("drums", "piano", "strings", "bass")
    start = time.monotonic()
    second = fetch_fixed_set(address, split, 3, 0.5, seed=2, timeout=30)
    assert time.monotonic() - start < 5
    assert second.digest == first.digest and np.array_equal(second.stems, first.stems)
    empty = next(s for s in ("train", "valid", "test") if s not in splits)
    with pytest.raises(ValueError, match="no eligible song"):
        fetch_fixed_set(address, empty, 2, 0.5, timeout=120)


def test_malformed_fixed_set_requests_get_an_error(served):
    address, _ = served
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        for bad in ({"split": "valid", "n": 10**6, "seconds": 1.0, "seed": 0},
                    {"split": "valid", "n": 2, "seconds": 1.0}):
            sock.send_multipart(encode({"type": "fixed_set_request", **bad}))
            assert sock.poll(20_000)
            header, _ = decode(sock.recv_multipart())
            assert header["type"] == "error" and "fixed set" in header["message"]
    finally:
        sock.close()
    with pytest.raises(ValueError, match="limit"):
        fetch_fixed_set(address, "valid", 1024, 60.0)
