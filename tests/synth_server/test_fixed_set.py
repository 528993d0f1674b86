"""Fixed-set wire format: keys, bounded sizes, validated replies (no sockets)."""
import numpy as np
import pytest

from synth_server.fixed_set import (MAX_BYTES, FixedSetKey, decode_fixed_set, digest_of, encode_fixed_set)
from synth_server.protocol import ProtocolError, decode

NAMES = ("drums", "piano", "strings", "bass")


def reply(key, rate=100):
    stems = np.random.default_rng(0).standard_normal((key.n, 4, key.samples(rate))).astype(np.float32)
    excerpts = [{"song": f"s{i}", "path": f"s{i}.mid", "offset": 10 * i} for i in range(key.n)]
    return stems, decode(encode_fixed_set(key, stems, excerpts, NAMES, rate, digest_of(stems)))


def test_round_trip_keeps_audio_meta_and_digest():
    key = FixedSetKey("valid", 3, 0.5, 7)
    stems, (header, payload) = reply(key)
    got = decode_fixed_set(header, payload, key)
    assert np.array_equal(got.stems, stems) and got.stems.shape == (3, 4, 50)
    assert got.stem_names == NAMES and got.sample_rate == 100 and got.excerpts[2]["offset"] == 20
    assert got.digest == digest_of(stems) and len(got.digest) == 16
    assert FixedSetKey.from_header(key.to_header()) == key


@pytest.mark.parametrize("fields, message", [
    ({"split": "dev"}, "split"), ({"n": 0}, "n must"), ({"n": 2.0}, "n must"), ({"seconds": 0}, "seconds"),
    ({"seconds": float("nan")}, "seconds"), ({"seconds": 1e9}, "seconds"), ({"seed": -1}, "seed"),
    ({"seconds": True}, "seconds"),
])
def test_bad_keys_are_refused(fields, message):
    header = {**FixedSetKey("valid", 2, 1.0, 0).to_header(), **fields}
    with pytest.raises(ProtocolError, match=message):
        FixedSetKey.from_header(header)


def test_oversized_sets_are_refused_before_anything_is_rendered():
    key = FixedSetKey("test", 1024, 60.0, 0)
    with pytest.raises(ProtocolError, match="limit"):
        key.check_size(4, 44100)
    FixedSetKey("test", 16, 4.0, 0).check_size(4, 44100)
    assert 16 * 4 * 4 * 44100 * 4 < MAX_BYTES


@pytest.mark.parametrize("change, message", [
    (lambda h, p: ({**h, "seed": 8}, p), "another key"),
    (lambda h, p: ({**h, "shape": [3, 4, 49]}, p), "shape"),
    (lambda h, p: (h, bytes(p)[:-4]), "payload length"),
    (lambda h, p: (h, b"\0" * len(bytes(p))), "digest"),
    (lambda h, p: ({**h, "excerpts": h["excerpts"][:2]}, p), "excerpt entries"),
    (lambda h, p: ({**h, "excerpts": [{"song": 1}] * 3}, p), "excerpt 0"),
    (lambda h, p: ({**h, "stems": ["a", "a", "b", "c"]}, p), "distinct"),
    (lambda h, p: ({**h, "type": "batch"}, p), "fixed_set reply"),
])
def test_bad_replies_are_refused(change, message):
    key = FixedSetKey("valid", 3, 0.5, 7)
    _, (header, payload) = reply(key)
    header, payload = change(header, payload)
    with pytest.raises(ProtocolError, match=message):
        decode_fixed_set(header, payload, key)


def test_key_versions_old_keys_keep_working_and_bad_ones_are_refused():
    old = {"split": "valid", "n": 2, "seconds": 1.0, "seed": 3}                 # a version-1 client's request
    assert FixedSetKey.from_header(old) == FixedSetKey("valid", 2, 1.0, 3, "default")
    held = FixedSetKey("test", 2, 1.0, 3, "holdout")
    assert FixedSetKey.from_header(held.to_header()) == held and held.to_header()["key_version"] == 2
    for bad, match in (({**old, "timbres": "holdout"}, "version 1 has no"), ({**old, "key_version": 3}, "key_version"),
                       ({**old, "key_version": 2, "timbres": "other"}, "timbres"),
                       ({**old, "key_version": 2}, "timbres")):
        with pytest.raises(ProtocolError, match=match):
            FixedSetKey.from_header(bad)
    # a server that predates timbres answers a held-out request with its default set: refused by name
    _, (header, payload) = reply(FixedSetKey("test", 2, 1.0, 3))
    old_reply = {k: v for k, v in header.items() if k not in ("key_version", "timbres")}
    with pytest.raises(ProtocolError, match="predates held-out-timbre"):
        decode_fixed_set(old_reply, payload, held)
    assert decode_fixed_set(old_reply, payload, FixedSetKey("test", 2, 1.0, 3)).server == {}
