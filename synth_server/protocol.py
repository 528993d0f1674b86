"""Wire format of the stemstream ZeroMQ protocol (see the streaming design).

Every message is a list of 1 or 2 frames: frame 0 is a UTF-8 JSON object with ``"v"``
(``PROTOCOL_VERSION``) and ``"type"``; the optional frame 1 is one raw contiguous buffer.
No pickle. The receiver validates everything and never allocates what a header claims: a
batch payload becomes an ``np.frombuffer`` view after its length has been checked.

Frames passed to ``decode`` are the message without a ROUTER envelope (strip the peer
identity first). Stem arrays on the wire have shape ``(batch, stems, window)`` with
``window = context + target + context``; dtype float16, int16 (value / 32767) or float32.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 4 << 20   # a batch of 1024 chunks with ~1.5 KB augmentation records each fits
DEFAULT_MAX_BATCH_BYTES = 256 << 20
INT16_SCALE = 32767.0
FLOAT16_MAX = float(np.finfo(np.float16).max)

STEM_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype(np.float16),
    "int16": np.dtype(np.int16),
    "float32": np.dtype(np.float32),
}
BATCH_TYPES = frozenset({"chunks", "batch"})
PAYLOAD_TYPES = BATCH_TYPES | {"song_data", "fixed_set"}
MESSAGE_TYPES = PAYLOAD_TYPES | {
    "hello", "welcome", "song_request", "credit", "heartbeat", "request",
    "ctl", "ctl_reply", "stats", "error", "fixed_set_request",   # fixed sets: synth_server.fixed_set
}
MAX_STEMS = 64
MAX_NAME_CHARS = 128


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the receiver drops and counts it."""


def _is_int(value: object) -> bool:
    return type(value) is int


def _as_bytes_view(frame: object, what: str) -> memoryview:
    """A flat byte view of a frame (bytes, memoryview, zmq.Frame, numpy array)."""
    try:
        view = memoryview(frame)
    except TypeError:
        raise ProtocolError(f"{what} is a {type(frame).__name__}, not a buffer") from None
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.c_contiguous:
        raise ProtocolError(f"{what} is not a contiguous buffer")
    return view.cast("B")


def encode(header: dict, payload: np.ndarray | bytes | None = None) -> list:
    """Frames for one message: ``[json_header]`` or ``[json_header, payload]``.

    ``header`` is copied and gets ``"v"``; its ``"type"`` must be a known message type.
    A numpy payload must be C-contiguous; it is passed on as is (no copy), so send with
    ``copy=False`` to hand ZeroMQ the array's own memory.
    """
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"cannot encode unknown message type {kind!r}")
    try:
        text = json.dumps({**header, "v": PROTOCOL_VERSION}, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{kind} header is not JSON-serialisable: {exc}") from None
    head = text.encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{kind} header is {len(head)} bytes (limit {MAX_HEADER_BYTES})")
    if payload is None:
        return [head]
    if isinstance(payload, np.ndarray) and not payload.flags.c_contiguous:
        raise ProtocolError(f"{kind} payload array must be C-contiguous")
    return [head, payload]


def _parse_header(frame: object) -> dict:
    raw = _as_bytes_view(frame, "header frame")
    if raw.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {raw.nbytes} bytes (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("header is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a JSON {type(header).__name__}, not an object")
    return header


def _check_envelope(header: dict, has_payload: bool) -> None:
    version = header.get("v")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} from peer != our version {PROTOCOL_VERSION}")
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    if kind in PAYLOAD_TYPES and not has_payload:
        raise ProtocolError(f"{kind} message has no payload frame")
    if kind not in PAYLOAD_TYPES and has_payload:
        raise ProtocolError(f"{kind} message must not carry a payload frame")


def decode(frames) -> tuple[dict, memoryview | None]:
    """Validate one message (list of 1-2 frames) -> ``(header, payload byte view or None)``.

    Raises ProtocolError for a wrong frame count, an oversized or non-JSON header, a
    version mismatch, an unknown type or a payload where none belongs (or none where one does).
    """
    if not isinstance(frames, (list, tuple)):
        raise ProtocolError(f"message is a {type(frames).__name__}, not a list of frames")
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(f"message has {len(frames)} frames (expected 1 or 2)")
    header = _parse_header(frames[0])
    _check_envelope(header, len(frames) == 2)
    payload = _as_bytes_view(frames[1], "payload frame") if len(frames) == 2 else None
    return header, payload


@dataclass(frozen=True)
class BatchSpec:
    """Geometry and encoding of stem arrays: each chunk is ``(len(stems), window)``."""

    sample_rate: int
    target: int
    context: int
    stems: tuple[str, ...]
    dtype: str

    @property
    def window(self) -> int:
        return self.context + self.target + self.context

    @property
    def np_dtype(self) -> np.dtype:
        return STEM_DTYPES[self.dtype]

    def to_header(self) -> dict:
        """The spec fields as JSON-ready values (also the client "welcome" body)."""
        return {"sample_rate": self.sample_rate, "target": self.target,
                "context": self.context, "stems": list(self.stems), "dtype": self.dtype}

    @classmethod
    def from_header(cls, header: dict) -> BatchSpec:
        """Read and validate the spec fields of a header; raises ProtocolError."""
        for key, low in (("sample_rate", 1), ("target", 1), ("context", 0)):
            value = header.get(key)
            if not _is_int(value) or not low <= value <= 1 << 30:
                raise ProtocolError(f"{key} {str(value)[:40]!r} is not an int in [{low}, 2^30]")
        stems = header.get("stems")
        if not isinstance(stems, list) or not 1 <= len(stems) <= MAX_STEMS:
            raise ProtocolError(f"stems must be a list of 1-{MAX_STEMS} names")
        if not all(isinstance(s, str) and 0 < len(s) <= MAX_NAME_CHARS for s in stems):
            raise ProtocolError("stem names must be non-empty strings")
        if len(set(stems)) != len(stems):
            raise ProtocolError(f"duplicate stem names in {stems}")
        dtype = header.get("dtype")
        if not isinstance(dtype, str) or dtype not in STEM_DTYPES:
            raise ProtocolError(f"dtype {str(dtype)[:40]!r} not one of {sorted(STEM_DTYPES)}")
        return cls(header["sample_rate"], header["target"], header["context"], tuple(stems), dtype)

    def mismatch(self, expect: BatchSpec) -> str | None:
        """A human-readable difference from ``expect``, or None when equal."""
        if self.stems != expect.stems:
            return f"stem list {list(self.stems)} != expected {list(expect.stems)}"
        for key in ("sample_rate", "target", "context", "dtype"):
            got, want = getattr(self, key), getattr(expect, key)
            if got != want:
                return f"{key} {got!r} != expected {want!r}"
        return None


def encode_batch(kind: str, spec: BatchSpec, stems: np.ndarray, chunks: list[dict],
                 **extra) -> list:
    """Frames of a "chunks" (worker) or "batch" (broker) message.

    ``stems``: ``(n, len(spec.stems), spec.window)`` in ``spec.dtype``, sent without a copy
    when C-contiguous. ``chunks``: n dicts ``{"song", "offset", "uses"}``. ``extra`` adds
    header keys (e.g. ``counters``); it may not override batch fields.
    """
    if kind not in BATCH_TYPES:
        raise ValueError(f"batch kind must be one of {sorted(BATCH_TYPES)}, not {kind!r}")
    want = (len(spec.stems), spec.window)
    if stems.ndim != 3 or stems.shape[1:] != want:
        raise ValueError(f"stems shape {stems.shape} != (n, {want[0]}, {want[1]})")
    if stems.dtype != spec.np_dtype:
        raise ValueError(f"stems dtype {stems.dtype} != spec dtype {spec.dtype}")
    if len(chunks) != stems.shape[0]:
        raise ValueError(f"{len(chunks)} chunk entries for {stems.shape[0]} stem arrays")
    header = {"type": kind, **spec.to_header(), "batch": int(stems.shape[0]),
              "shape": [int(d) for d in stems.shape], "chunks": chunks}
    clash = sorted(set(extra) & (set(header) | {"v"}))
    if clash:
        raise ValueError(f"extra header keys {clash} would override batch fields")
    header.update(extra)
    return encode(header, np.ascontiguousarray(stems))


def _check_chunk_meta(chunks: object, n: int) -> list[dict]:
    if not isinstance(chunks, list) or len(chunks) != n:
        got = len(chunks) if isinstance(chunks, list) else type(chunks).__name__
        raise ProtocolError(f"chunks must be a list of {n} entries (got {got})")
    for i, meta in enumerate(chunks):
        if not isinstance(meta, dict) or not isinstance(meta.get("song"), str):
            raise ProtocolError(f"chunk {i}: needs a string 'song'")
        offset, uses = meta.get("offset"), meta.get("uses", 0)
        if not _is_int(offset) or offset < 0 or not _is_int(uses) or uses < 0:
            raise ProtocolError(f"chunk {i}: 'offset' and 'uses' must be non-negative ints")
        if not isinstance(meta.get("augment", {}), dict):
            raise ProtocolError(f"chunk {i}: 'augment' must be an object")
    return chunks


def _batch_shape(header: dict, spec: BatchSpec) -> tuple[int, int, int]:
    n, shape = header.get("batch"), header.get("shape")
    if not _is_int(n) or n < 0:
        raise ProtocolError(f"batch size {str(n)[:40]!r} is not a non-negative int")
    if not isinstance(shape, list) or len(shape) != 3 or not all(map(_is_int, shape)):
        raise ProtocolError(f"shape {str(shape)[:60]} is not a list of 3 ints")
    want = [n, len(spec.stems), spec.window]
    if shape != want:
        raise ProtocolError(f"shape {shape} != [batch, stems, window] = {want}")
    return n, want[1], want[2]


def decode_batch(header: dict, payload: memoryview | bytes | None,
                 expect: BatchSpec | None = None,
                 max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> tuple[BatchSpec, np.ndarray, list[dict]]:
    """Validate a decoded "chunks"/"batch" message -> ``(spec, stems, chunks)``.

    ``stems`` is a zero-copy ``(n, stems, window)`` view of ``payload`` (read-only when the
    payload is ``bytes``). Sizes are checked against ``max_bytes`` and the real payload
    length before the payload is touched. With ``expect``, the spec must match it.
    """
    if not isinstance(header.get("type"), str) or header["type"] not in BATCH_TYPES:
        raise ProtocolError(f"{str(header.get('type'))[:40]!r} is not a batch message")
    spec = BatchSpec.from_header(header)
    if expect is not None and (diff := spec.mismatch(expect)):
        raise ProtocolError(diff)
    shape = _batch_shape(header, spec)
    claimed = shape[0] * shape[1] * shape[2] * spec.np_dtype.itemsize
    if claimed > max_bytes:
        raise ProtocolError(f"batch claims {claimed / 2**20:.1f} MiB (limit {max_bytes / 2**20:.1f} MiB)")
    chunks = _check_chunk_meta(header.get("chunks"), shape[0])
    if payload is None:
        raise ProtocolError("batch message has no payload")
    view = _as_bytes_view(payload, "payload")
    if view.nbytes != claimed:
        raise ProtocolError(f"payload is {view.nbytes} bytes, header shape {list(shape)} "
                            f"{spec.dtype} needs {claimed}")
    stems = np.frombuffer(view, dtype=spec.np_dtype).reshape(shape)
    return spec, stems, chunks


def to_wire(stems_f32: np.ndarray, dtype: str) -> tuple[np.ndarray, int]:
    """float32 stems (any shape) -> ``(array in wire dtype, number of clipped samples)``.

    int16 maps [-1, 1] to [-32767, 32767] and clips outside; float16 clips beyond +-65504;
    float32 is copied as is. Non-finite input raises ValueError.
    """
    if dtype not in STEM_DTYPES:
        raise ValueError(f"wire dtype {dtype!r} not one of {sorted(STEM_DTYPES)}")
    x = np.asarray(stems_f32, dtype=np.float32)
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"stems contain {bad} non-finite samples")
    if dtype == "float32":
        return np.array(x, dtype=np.float32, order="C"), 0
    limit = 1.0 if dtype == "int16" else FLOAT16_MAX
    clipped = int(np.count_nonzero(np.abs(x) > limit))
    if dtype == "float16":
        return np.clip(x, -limit, limit).astype(np.float16), clipped
    scaled = np.clip(x, -1.0, 1.0) * np.float32(INT16_SCALE)
    return np.rint(scaled).astype(np.int16), clipped


def from_wire(arr: np.ndarray) -> np.ndarray:
    """Wire-dtype stems (any shape) -> float32 (a new array unless already float32)."""
    if arr.dtype == np.int16:
        return arr.astype(np.float32) * np.float32(1.0 / INT16_SCALE)
    if arr.dtype in (np.float16, np.float32):
        return arr.astype(np.float32, copy=False)
    raise ValueError(f"not a wire dtype: {arr.dtype}")
