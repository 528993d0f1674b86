"""Typed configs of the trainer commands; parsed once in ``trainer/cli.py`` and passed down.

Nothing below the CLI reads flags or environment variables: ``TrainConfig`` carries every
training option and ``DistConfig`` the torchrun rank layout (read from RANK / WORLD_SIZE /
LOCAL_RANK by the CLI only). ``resolve_device`` / ``resolve_amp`` / ``resolve_compile`` turn
the "auto" settings into concrete ones.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .gain import GAIN_MODES
from .losses import parse_loss
from .models import PRESETS, ArchConfig, preset
from .step import LR_SCHEDULES

DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("auto", "on", "off")
AMP_MODES = ("auto", "bf16", "off")


@dataclass(frozen=True)
class TrainConfig:
    """``trainer train``: options of one training run (see docs/training.md).

    ``steps`` is the total optimizer step to reach (a resumed run continues up to it).
    ``stem_weights`` is one weight per stem or None (all 1). ``remix_gain`` is the
    (low, high) range of the uniform per-stem gain drawn for every use of a chunk under
    ``remix``; each stem also gets a random sign. ``torch_threads`` None means 1 on CPU and
    PyTorch's default on CUDA. ``keep_checkpoints`` numbered checkpoints are kept besides
    ``last.pt``; ``stats_every`` asks the server for its stats (R) every that many steps
    (0: never). ``timeout``: seconds of stream silence before the client reconnects;
    ``give_up``: seconds without any batch before training saves a checkpoint and stops.
    ``model_config``: the architecture when ``--model-config`` set fields on the ``model`` preset.
    ``loss`` is a name or a "+" combination (``losses.parse_loss``); ``balance`` divides each
    stem's loss by its level (``losses.get_loss``); ``gain`` the gain staging mode (``gain.py``);
    ``remix_across`` re-pairs stems across the batch; ``clip_grad`` the max gradient norm (None:
    off); ``max_bad_steps`` skipped non-finite steps in a row before the run stops;
    ``lr_schedule`` with ``warmup_steps``, ``lr_step_every`` and ``lr_gamma`` (``step.lr_factor``);
    ``valid_every`` (0: off) validates on ``valid_n`` excerpts of ``valid_seconds`` (seed
    ``valid_seed``) of split ``valid_split``, served by the broker.
    """

    connect: str
    run_dir: Path
    model: str = "seed"
    loss: str = "mae"
    batch_size: int = 12
    lr: float = 1e-4
    steps: int = 100_000
    resume: bool = False
    remix: bool = False
    remix_gain: tuple[float, float] = (0.25, 1.25)
    stem_weights: tuple[float, ...] | None = None
    device: str = "auto"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    audio_every: int = 1000
    stats_every: int = 50
    prefetch: int = 4
    timeout: float = 30.0
    give_up: float = 600.0
    torch_threads: int | None = None
    compile: str = "auto"
    amp: str = "auto"
    seed: int = 0
    curve_keys: Path | None = None
    model_config: ArchConfig | None = None
    balance: bool = True
    gain: str = "rms"
    remix_across: bool = False
    clip_grad: float | None = None
    max_bad_steps: int = 20
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_step_every: int = 10_000
    lr_gamma: float = 0.5
    valid_every: int = 500
    valid_n: int = 16
    valid_seconds: float = 2.0
    valid_seed: int = 0
    valid_split: str = "valid"

    def __post_init__(self) -> None:
        if not self.connect.startswith("tcp://") or ":" not in self.connect[6:]:
            raise ValueError(f"--connect must look like tcp://HOST:PORT, got {self.connect!r}")
        if self.model not in PRESETS:
            raise ValueError(f"--model must be one of {sorted(PRESETS)}, got {self.model!r}")
        try:
            parse_loss(self.loss)
        except ValueError as exc:
            raise ValueError(f"--loss: {exc}") from None
        if self.gain not in GAIN_MODES or self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--gain must be one of {GAIN_MODES} and --lr-schedule one of {LR_SCHEDULES}, "
                             f"got {self.gain!r}, {self.lr_schedule!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"--clip-grad must be > 0, got {self.clip_grad}")
        if not 0 < self.lr_gamma <= 1 or not 0 < self.valid_seconds <= 60:
            raise ValueError(f"--lr-gamma must be in (0, 1] and --valid-seconds in (0, 60], "
                             f"got {self.lr_gamma}, {self.valid_seconds}")
        for name, value in (("device", self.device), ("compile", self.compile), ("amp", self.amp)):
            allowed = {"device": DEVICES, "compile": COMPILE_MODES, "amp": AMP_MODES}[name]
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {'|'.join(allowed)}, got {value!r}")
        self._check_counts()
        low, high = self.remix_gain
        if not 0 <= low <= high:
            raise ValueError(f"remix gain range must satisfy 0 <= low <= high, got {self.remix_gain}")
        if self.stem_weights is not None and (not self.stem_weights or min(self.stem_weights) < 0):
            raise ValueError(f"--stem-weights must be non-negative numbers, got {self.stem_weights}")
        if not self.lr > 0 or not self.timeout > 0 or not self.give_up > 0:
            raise ValueError(f"--lr, --timeout and --give-up must be > 0 "
                             f"(got {self.lr}, {self.timeout}, {self.give_up})")

    def _check_counts(self) -> None:
        positive = ("batch_size", "steps", "checkpoint_every", "log_every", "prefetch", "keep_checkpoints",
                    "max_bad_steps", "lr_step_every", "valid_n")
        for name in positive:
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, name)}")
        for name in ("audio_every", "stats_every", "warmup_steps", "valid_every", "valid_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"--torch-threads must be >= 1, got {self.torch_threads}")

    def architecture(self) -> ArchConfig:
        """The model config to build: ``model_config`` (from --model-config) or the preset."""
        return self.model_config if self.model_config is not None else preset(self.model)

    def to_dict(self) -> dict:
        """JSON-ready dict (paths as strings, tuples as lists)."""
        out = asdict(self)
        out["model_config"] = None if self.model_config is None else self.model_config.to_dict()
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


@dataclass(frozen=True)
class DistConfig:
    """Process layout under torchrun: ``rank`` of ``world_size`` processes, ``local_rank`` on
    this host (the CUDA device index). The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"bad process layout: rank {self.rank} of {self.world_size}, "
                             f"local rank {self.local_rank}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def address(self, connect: str) -> str:
        """This rank's broker from ``--connect A[,B,...]``: rank r reads from address r mod n, so
        several servers (one per corpus shard) feed one DDP run, each rank from one of them."""
        addresses = [a.strip() for a in connect.split(",") if a.strip()]
        if not addresses:
            raise ValueError(f"--connect {connect!r} names no broker address")
        return addresses[self.rank % len(addresses)]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> when CUDA is available, else cpu; "cuda" -> cuda:<local_rank>;
    anything else as torch spells it ("cpu", "cuda:1"). ValueError for an unknown name or CUDA
    asked for without a CUDA device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} but PyTorch sees no CUDA device")
    return device


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 for "bf16" and for "auto" on CUDA, None (fp32) otherwise."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_compile(mode: str, device: torch.device) -> bool:
    """torch.compile on for "on", and for "auto" on CUDA."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


UNITS = ("excerpt", "chunk")
DEFAULT_N = {"excerpt": 32, "chunk": 256}


@dataclass(frozen=True)
class EvalConfig:
    """``trainer eval`` / ``trainer report``: score ``checkpoints`` side by side (see docs/evaluation.md).

    Material: ``n`` excerpts of ``seconds`` rendered from ``corpus`` (split ``split``, seed
    ``seed``) with ``soundfont`` (the in-distribution timbres) and, when given, the same
    excerpts with ``holdout_soundfonts``; or the songs of ``stems_dir`` (MUSDB18-HQ / Slakh2100
    layouts, ``stems_map`` a mapping file, ``exclude_other`` drops sources outside the classes
    from the mixture); or the fixed sets of the server at ``connect`` (its default timbres and,
    with ``holdout_timbres``, its held-out ones; ``timeout`` seconds for each, ``curve_keys`` a
    `synth-server keygen` folder). ``unit="chunk"`` scores 100 ms chunks instead (one checkpoint,
    corpus only). ``n`` None means ``DEFAULT_N[unit]`` (every song of ``stems_dir``). ``window``: target samples per model call, as
    ``trainer separate``. ``bss`` False skips BSS-eval (SI-SDR only).
    """

    checkpoints: tuple[Path, ...]
    corpus: Path | None = None
    stems_dir: Path | None = None
    connect: str | None = None
    unit: str = "excerpt"
    n: int | None = None
    seconds: float = 10.0
    seed: int = 1234
    split: str = "test"
    soundfont: Path | None = None
    holdout_soundfonts: tuple[Path, ...] = ()     # files, folders or names of the soundfont bank
    holdout_timbres: bool = False
    timeout: float = 300.0
    curve_keys: Path | None = None
    stems_map: Path | None = None
    exclude_other: bool = False
    bss: bool = True
    json_out: Path | None = None
    plot_out: Path | None = None
    table_out: Path | None = None
    report_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    window: int = 44100

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(Path(p) for p in self.checkpoints))
        if not self.checkpoints:
            raise ValueError("give at least one --checkpoint")
        if self.unit not in UNITS:
            raise ValueError(f"--unit must be one of {UNITS}, got {self.unit!r}")
        if sum(x is not None for x in (self.corpus, self.stems_dir, self.connect)) != 1:
            raise ValueError("give exactly one of --corpus (rendered excerpts), --stems-dir (real multitracks) "
                             "and --connect (a server's fixed sets)")
        if self.unit == "chunk" and (self.corpus is None or len(self.checkpoints) > 1
                                     or self.holdout_soundfonts or self.report_dir is not None):
            raise ValueError("--unit chunk scores one checkpoint on a --corpus (no --stems-dir, --connect, "
                             "--holdout-soundfont or report)")
        if self.connect is None and self.holdout_timbres:
            raise ValueError("--holdout-timbres asks a server (--connect) for its held-out timbres; "
                             "with --corpus use --holdout-soundfont")
        if self.connect is not None and (self.soundfont is not None or self.holdout_soundfonts):
            raise ValueError("with --connect the server's soundfonts are used (no --soundfont / "
                             "--holdout-soundfont; --holdout-timbres asks for its held-out ones)")
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 s, got {self.timeout}")
        if self.n is None and self.stems_dir is None:
            object.__setattr__(self, "n", DEFAULT_N[self.unit])
        if (self.n is not None and self.n < 1) or self.batch_size < 1 or self.window < 1 or not self.seconds > 0:
            raise ValueError(f"--n, --batch-size and --window must be >= 1 and --seconds > 0 (got n={self.n}, "
                             f"batch_size={self.batch_size}, window={self.window}, seconds={self.seconds})")

    @property
    def checkpoint(self) -> Path:
        """The first (for ``--unit chunk`` the only) checkpoint."""
        return self.checkpoints[0]


@dataclass(frozen=True)
class SeparateConfig:
    """``trainer separate``: split an audio/MIDI ``input`` into stem files under ``out``."""

    checkpoint: Path
    input: Path
    out: Path
    device: str = "auto"
    window: int = 44100  # target samples per window
