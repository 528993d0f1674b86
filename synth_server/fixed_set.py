"""Fixed sets on request: deterministic excerpts of a corpus split, rendered by the server.

A trainer has no FluidSynth; for learning curves and held-out evaluation it asks the broker for a
*fixed set*: ``n`` excerpts of ``seconds`` each from split ``split``, chosen and rendered with
``seed`` and no augmentation, the same every time for the same corpus and server settings. The
broker renders a set once (``serve.fixed_sets``, in a spawned process) and caches it per key.

Wire (``protocol``: versioned JSON header + one raw buffer; no hello needed, like ``ctl``):

* client -> broker ``fixed_set_request``: the key: ``key_version`` 2, ``split``, ``n``,
  ``seconds``, ``seed``, ``timbres`` ("default": the server's in-distribution timbres;
  "holdout": the same songs and positions rendered with its held-out soundfonts only,
  ``config.heldout_timbres``). A request without ``key_version`` is a version-1 key (no
  ``timbres``: "default"), so older clients keep working;
* broker -> client ``fixed_set``: the key fields, ``sample_rate``, ``stems`` (names), ``shape``
  ``[n, stems, samples]``, ``dtype`` "float32", ``excerpts`` (n x ``{song, path, offset,
  soundfonts}``: song id, corpus path, first sample, soundfont name per stem), ``digest``
  (sha256 of the payload, 16 hex digits: two sets with the same digest are the same audio) and
  ``server`` (the server's synthesis config, ``serve.config.source_to_json``) + the payload
  ``(n, stems, samples)`` float32;
* or ``error`` with ``code`` "fixed_set_failed" (e.g. no eligible song in the split) or no code
  (a malformed request, or held-out timbres from a server without held-out soundfonts).

Sizes are bounded on both sides: ``n <= MAX_N``, ``seconds <= MAX_SECONDS``, payload at most
``MAX_BYTES``. ``fetch_fixed_set`` is the client call (torch-free, its own socket).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from synth_server.config import SPLITS
from synth_server.dealer import Curve, open_dealer
from synth_server.protocol import MAX_HEADER_BYTES, MAX_NAME_CHARS, MAX_STEMS, ProtocolError, decode, encode

MAX_N = 1024
MAX_SECONDS = 60.0
MAX_BYTES = 256 << 20
KEY_VERSIONS = (1, 2)
TIMBRES = ("default", "holdout")


def _int(value: object) -> bool:
    return type(value) is int


@dataclass(frozen=True)
class FixedSetKey:
    """What identifies a fixed set (with the server's corpus and render settings)."""

    split: str
    n: int
    seconds: float
    seed: int
    timbres: str = "default"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ProtocolError(f"fixed set split {str(self.split)[:20]!r} not one of {SPLITS}")
        if not _int(self.n) or not 1 <= self.n <= MAX_N:
            raise ProtocolError(f"fixed set n must be an int in [1, {MAX_N}], got {str(self.n)[:20]}")
        if (not isinstance(self.seconds, (int, float)) or isinstance(self.seconds, bool)
                or not 0 < self.seconds <= MAX_SECONDS or not math.isfinite(self.seconds)):
            raise ProtocolError(f"fixed set seconds must be in (0, {MAX_SECONDS:g}], got {str(self.seconds)[:20]}")
        if not _int(self.seed) or not 0 <= self.seed < 2**53:
            raise ProtocolError(f"fixed set seed must be an int in [0, 2^53), got {str(self.seed)[:20]}")
        if self.timbres not in TIMBRES:
            raise ProtocolError(f"fixed set timbres {str(self.timbres)[:20]!r} not one of {TIMBRES}")
        object.__setattr__(self, "seconds", float(self.seconds))

    def samples(self, sample_rate: int) -> int:
        """Samples per excerpt at ``sample_rate``."""
        return int(round(self.seconds * sample_rate))

    def check_size(self, stems: int, sample_rate: int) -> None:
        """ProtocolError when the set would exceed ``MAX_BYTES``."""
        size = self.n * stems * self.samples(sample_rate) * 4
        if size > MAX_BYTES:
            raise ProtocolError(f"fixed set of {self.n} x {self.seconds:g} s x {stems} stems is "
                                f"{size / 2**20:.0f} MiB (limit {MAX_BYTES >> 20} MiB): ask for fewer or shorter")

    def to_header(self) -> dict:
        return {"key_version": 2, "split": self.split, "n": self.n, "seconds": self.seconds, "seed": self.seed,
                "timbres": self.timbres}

    @classmethod
    def from_header(cls, header: dict) -> FixedSetKey:
        version = header.get("key_version", 1)
        if not _int(version) or version not in KEY_VERSIONS:
            raise ProtocolError(f"fixed set key_version {str(version)[:20]} not one of {KEY_VERSIONS}")
        if version == 1 and "timbres" in header:
            raise ProtocolError("fixed set key version 1 has no 'timbres' (send key_version 2)")
        timbres = header.get("timbres") if version == 2 else "default"
        return cls(header.get("split"), header.get("n"), header.get("seconds"), header.get("seed"), timbres)


@dataclass(frozen=True)
class FixedSet:
    """A received fixed set: ``stems`` ``(n, stems, samples)`` float32, one ``excerpts`` entry
    (``{song, path, offset}``, from newer servers ``soundfonts``) per item, ``stem_names``,
    ``sample_rate``, ``digest``, ``server`` (the server's synthesis config; {} from older servers)."""

    key: FixedSetKey
    stems: np.ndarray
    excerpts: list[dict]
    stem_names: tuple[str, ...]
    sample_rate: int
    digest: str
    server: dict = field(default_factory=dict)


def digest_of(stems: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(stems, np.float32).tobytes()).hexdigest()[:16]


def encode_fixed_set(key: FixedSetKey, stems: np.ndarray, excerpts: list[dict], stem_names: tuple[str, ...],
                     sample_rate: int, digest: str, server: dict | None = None) -> list:
    """Frames of a ``fixed_set`` reply; ``stems`` ``(key.n, len(stem_names), samples)`` float32."""
    want = (key.n, len(stem_names), key.samples(sample_rate))
    if stems.shape != want or stems.dtype != np.float32 or len(excerpts) != key.n:
        raise ValueError(f"fixed set stems {stems.shape} {stems.dtype} / {len(excerpts)} excerpts "
                         f"do not match {want} float32")
    header = {"type": "fixed_set", **key.to_header(), "sample_rate": sample_rate, "stems": list(stem_names),
              "shape": list(want), "dtype": "float32", "excerpts": excerpts, "digest": digest,
              "server": server or {}}
    return encode(header, np.ascontiguousarray(stems))


def _check_excerpts(excerpts: object, n: int, stems: int) -> list[dict]:
    if not isinstance(excerpts, list) or len(excerpts) != n:
        raise ProtocolError(f"fixed set needs {n} excerpt entries")
    for i, e in enumerate(excerpts):
        if (not isinstance(e, dict) or not isinstance(e.get("song"), str) or not isinstance(e.get("path"), str)
                or not _int(e.get("offset")) or e["offset"] < 0):
            raise ProtocolError(f"fixed set excerpt {i}: needs strings 'song', 'path' and an int 'offset' >= 0")
        names = e.get("soundfonts", [])
        if not isinstance(names, list) or len(names) not in (0, stems) or not all(
                isinstance(x, str) and len(x) <= MAX_NAME_CHARS for x in names):
            raise ProtocolError(f"fixed set excerpt {i}: 'soundfonts' must be one short name per stem")
    return excerpts


def decode_fixed_set(header: dict, payload, key: FixedSetKey) -> FixedSet:
    """Validate a ``fixed_set`` reply for ``key`` -> ``FixedSet`` (the stems are a copy)."""
    if header.get("type") != "fixed_set":
        raise ProtocolError(f"expected a fixed_set reply, got {str(header.get('type'))[:40]!r}")
    if key.timbres != "default" and "timbres" not in header:
        raise ProtocolError("the server predates held-out-timbre fixed sets (it sent its default timbres)")
    if FixedSetKey.from_header(header) != key:
        raise ProtocolError("fixed set reply is for another key")
    rate, names, digest = header.get("sample_rate"), header.get("stems"), header.get("digest")
    if not _int(rate) or not 1 <= rate <= 1 << 20:
        raise ProtocolError(f"bad sample_rate {str(rate)[:20]}")
    if (not isinstance(names, list) or not 1 <= len(names) <= MAX_STEMS or len(set(names)) != len(names)
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_NAME_CHARS for s in names)):
        raise ProtocolError("fixed set stems must be distinct non-empty names")
    if not isinstance(digest, str) or len(digest) > 64:
        raise ProtocolError("fixed set digest must be a short string")
    key.check_size(len(names), rate)
    want = [key.n, len(names), key.samples(rate)]
    if header.get("shape") != want or header.get("dtype") != "float32":
        raise ProtocolError(f"fixed set shape {str(header.get('shape'))[:60]} / dtype != {want} float32")
    excerpts = _check_excerpts(header.get("excerpts"), key.n, len(names))
    server = header.get("server", {})
    if not isinstance(server, dict):
        raise ProtocolError("fixed set 'server' must be an object")
    view = memoryview(payload).cast("B") if payload is not None else None
    if view is None or view.nbytes != 4 * want[0] * want[1] * want[2]:
        raise ProtocolError("fixed set payload length does not match its shape")
    stems = np.frombuffer(view, dtype=np.float32).reshape(want).copy()
    if digest_of(stems) != digest:
        raise ProtocolError("fixed set payload does not match its digest")
    return FixedSet(key, stems, excerpts, tuple(names), rate, digest, server)


def fetch_fixed_set(address: str, split: str, n: int, seconds: float, seed: int = 0, *, timbres: str = "default",
                    timeout: float = 300.0, curve: Curve | None = None) -> FixedSet:
    """Ask the broker at ``address`` for a fixed set; waits up to ``timeout`` seconds (the first
    request of a key renders it). Raises TimeoutError, ValueError for a refusal or a bad reply."""
    try:
        key = FixedSetKey(split, n, seconds, seed, timbres)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    sock = open_dealer(zmq.Context.instance(), address, curve, max_bytes=MAX_BYTES + MAX_HEADER_BYTES)
    try:
        sock.send_multipart(encode({"type": "fixed_set_request", **key.to_header()}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(min(left, 1.0) * 1000) + 1):
                if left <= 0:
                    raise TimeoutError(f"no fixed set from {address} within {timeout:g} s")
                continue
            try:
                header, payload = decode(sock.recv_multipart(copy=False))
                if header["type"] == "error":
                    raise ValueError(f"broker {address} refused the fixed set: {str(header.get('message'))[:300]}")
                return decode_fixed_set(header, payload, key)
            except ProtocolError as exc:
                raise ValueError(f"bad fixed set reply from {address}: {exc}") from None
    finally:
        sock.close(linger=0)
