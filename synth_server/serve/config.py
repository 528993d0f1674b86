"""Typed configuration of the streaming server processes (broker, workers, control commands).

``cli_serve`` parses flags once into these dataclasses; nothing below it reads argparse or the
environment. ``source_to_json``/``source_from_json`` carry the chunk-source settings from the
broker to (possibly remote) workers in the "welcome" header.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synth_server.augment_config import augment_from_dict, augment_to_dict
from synth_server.config import (MAX_MIDI_BYTES, AudioConfig, ChunkSourceConfig, CorpusConfig, FilterConfig, InstrumentClass,
                     RenderConfig)

WIRE_DTYPES = ("float16", "int16", "float32")


@dataclass(frozen=True)
class BrokerConfig:
    """The broker process: socket, pool, reuse and the auto-scaling bounds.

    ``reuse_auto``/``workers_auto`` turn on the adaptive rules of docs/streaming.md; then
    ``reuse`` and ``workers`` are only the starting values.
    """

    bind: str = "127.0.0.1"
    port: int = 5555                 # 0 -> a free port (tests)
    pool_size: int = 4096            # chunks held at most
    dtype: str = "float16"           # wire and pool dtype
    reuse: int = 1
    reuse_auto: bool = False
    max_reuse: int = 8
    workers: int = 2
    workers_auto: bool = False
    min_workers: int = 1
    max_workers: int = 4
    seed: int = 0
    curve_keys: Path | None = None   # folder from `keygen`; None -> no encryption
    heartbeat_timeout: float = 5.0   # seconds without a heartbeat before a worker is forgotten
    credit_block: int = 64           # most chunks one worker may hold credit for
    max_client_credit: int = 64      # most batches one client may have outstanding
    max_batch_size: int = 1024
    max_song_bytes: int = MAX_MIDI_BYTES

    def __post_init__(self) -> None:
        if self.dtype not in WIRE_DTYPES:
            raise ValueError(f"dtype must be one of {WIRE_DTYPES}, got {self.dtype!r}")
        if self.pool_size < 1:
            raise ValueError(f"pool size must be >= 1, got {self.pool_size}")
        if not 1 <= self.reuse <= self.max_reuse:
            raise ValueError(f"reuse must be in 1..{self.max_reuse} (max reuse), got {self.reuse}")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 0 <= min workers <= max workers, got {self.min_workers}..{self.max_workers}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class WorkerConfig:
    """One worker process. ``parent_pid`` set -> exit when that process is gone (local workers)."""

    connect: str
    soundfont: Path | None = None
    curve_keys: Path | None = None
    worker_id: str = ""              # "" -> derived from host and pid
    heartbeat_s: float = 1.0
    send_batch: int = 32             # chunks per "chunks" message at most
    song_cache: int = 8              # parsed songs kept in memory
    parent_pid: int | None = None
    reply_timeout: float = 10.0      # seconds to wait for a welcome or song_data


@dataclass(frozen=True)
class ServeConfig:
    """`serve`: broker + local workers + optional Prometheus endpoint."""

    source: ChunkSourceConfig        # source.render.soundfont is handed to local workers
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    metrics_port: int | None = None
    demo_songs: int = 24             # written when the corpus folder holds no MIDI
    grace_s: float = 5.0             # SIGTERM -> SIGKILL delay for local workers
    ready_file: Path | None = None   # gets the connect address once bound and workers started


@dataclass(frozen=True)
class ControlConfig:
    """`ctl`: one command. ``cmd`` is "set" (with ``key``, ``value``), "pause" or "resume"."""

    connect: str
    cmd: str
    key: str = ""
    value: str = ""
    curve_keys: Path | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class StatsConfig:
    """`stats`: print once, or every ``watch`` seconds."""

    connect: str
    as_json: bool = False
    watch: float | None = None
    curve_keys: Path | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class KeygenConfig:
    out: Path


def source_to_json(src: ChunkSourceConfig) -> dict[str, Any]:
    """The parts of a ChunkSourceConfig a worker needs (no corpus path, no soundfont path)."""
    render = asdict(src.render)
    render.pop("soundfont")
    return {"audio": asdict(src.audio), "filter": asdict(src.filter), "render": render,
            "classes": [{"name": c.name, "programs": list(c.programs), "is_drum": c.is_drum}
                        for c in src.corpus.classes],
            "augment": augment_to_dict(src.augment), "split": src.split,
            "max_chunks_per_song": src.max_chunks_per_song}


def _build(cls, data: Any, what: str):
    if not isinstance(data, dict):
        raise ValueError(f"welcome: {what} must be an object")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ValueError(f"welcome: bad {what}: {exc}") from None


def _classes(data: Any) -> tuple[InstrumentClass, ...]:
    if not isinstance(data, list) or not data:
        raise ValueError("welcome: classes must be a non-empty list")
    out = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("welcome: every class needs a name")
        progs = item.get("programs", [])
        if not isinstance(progs, list) or not all(isinstance(p, int) and 0 <= p <= 127 for p in progs):
            raise ValueError(f"welcome: class {item['name']}: programs must be ints 0..127")
        out.append(InstrumentClass(item["name"], tuple(progs), bool(item.get("is_drum", False))))
    return tuple(out)


def source_from_json(data: Any) -> ChunkSourceConfig:
    """Inverse of ``source_to_json``; raises ValueError naming the bad part."""
    if not isinstance(data, dict):
        raise ValueError("welcome: source must be an object")
    audio = _build(AudioConfig, data.get("audio"), "audio")
    for name in ("sample_rate", "target", "context"):
        value = getattr(audio, name)
        if not isinstance(value, int) or value <= 0 or value > 10_000_000:
            raise ValueError(f"welcome: audio.{name} must be a positive int, got {value!r}")
    mcps = data.get("max_chunks_per_song")
    if not isinstance(mcps, int) or mcps < 1:
        raise ValueError("welcome: max_chunks_per_song must be a positive int")
    classes = _classes(data.get("classes"))
    augment = augment_from_dict(data.get("augment", {}))   # a broker without augmentation sends none
    return ChunkSourceConfig(augment=augment,
        corpus=CorpusConfig(root=Path("."), classes=classes), audio=audio,
        render=_build(RenderConfig, data.get("render"), "render"),
        filter=_build(FilterConfig, data.get("filter"), "filter"),
        split=str(data.get("split", "train")), max_chunks_per_song=mcps)


def parse_worker_welcome(header: dict) -> tuple[ChunkSourceConfig, list[tuple[str, float]], int, str]:
    """A worker "welcome" -> (source, [(song_id, duration s)], seed, wire dtype); ValueError if bad."""
    source = source_from_json(header.get("source"))
    songs, seed, dtype = header.get("songs"), header.get("seed"), header.get("dtype")
    if not isinstance(songs, list) or not songs or not all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], (int, float))
            for s in songs):
        raise ValueError("welcome: songs must be a non-empty list of [song_id, duration]")
    if type(seed) is not int or seed < 0 or dtype not in WIRE_DTYPES:
        raise ValueError(f"welcome: bad seed {seed!r} or dtype {dtype!r}")
    return source, [(s[0], float(s[1])) for s in songs], seed, dtype


SERVER_KEY = "server"   # keygen writes server.key / server.key_secret
CLIENT_KEY = "client"   # and client.key / client.key_secret into one folder


def _load_key(keys_dir: Path, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = Path(keys_dir) / (f"{name}.key_secret" if secret else f"{name}.key")
    if not path.is_file():
        raise ValueError(f"CURVE key file {path} not found (create the folder with `keygen --out DIR`)")
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read CURVE key file {path}: {exc}") from None
    if secret and not private:
        raise ValueError(f"{path} holds no secret key")
    return public, private


def load_client_curve(keys_dir: Path) -> tuple[bytes, bytes, bytes]:
    """``(client_public, client_secret, server_public)`` Z85 keys from a `keygen` folder."""
    public, private = _load_key(keys_dir, CLIENT_KEY, secret=True)
    server_public, _ = _load_key(keys_dir, SERVER_KEY, secret=False)
    return public, private, server_public


def load_server_curve(keys_dir: Path) -> tuple[bytes, bytes]:
    """``(server_public, server_secret)`` Z85 keys from a `keygen` folder."""
    public, private = _load_key(keys_dir, SERVER_KEY, secret=True)
    return public, private
