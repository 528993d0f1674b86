"""Training checkpoints: atomic writes, ``last.pt`` plus the last few numbered ones, safe loads.

A checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and dicts only; no
arbitrary pickled objects)::

    format       "stemstream-separator", version 2 (version 1 is read too)
    model_config cfg.to_dict(): "kind" + that kind's fields   model_name  preset name (e.g. "seed")
    model        state dict of the bare model   optimizer   Adam state dict (or None)
    step         optimizer steps done           loss        loss name (e.g. "mae")
    spec         stream geometry: {"sample_rate", "target", "context", "stems", "dtype"}
    train_config TrainConfig.to_dict()          commit      git commit or "unknown"
    gain         GainStaging.to_dict(): what the model's input is divided by (absent: raw levels)
    best_valid   best validation SI-SDRi so far (dB) or None; valid: the figures of best.pt

``best.pt`` (written by training when the validation SI-SDRi improves) is a checkpoint like the
others. Inference must feed the model as ``gain.apply_separator`` does with ``LoadedCheckpoint.gain``.

``spec.context`` is what the stream sent per side; the model itself needs
``required_context(model_config)``, which eval/separate should use. Version 1 held one flat
config for wavenet and flatconv; ``config_from_dict`` converts it (same state-dict keys).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from synth_server.protocol import BatchSpec, ProtocolError

from .models import ArchConfig, build_model, config_from_dict
from .gain import GainStaging

FORMAT = "stemstream-separator"
VERSION = 2
READABLE = (1, 2)
LAST = "last.pt"
BEST = "best.pt"
_REQUIRED = ("model_config", "model", "step", "loss", "spec")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A validated checkpoint: typed ``model_config`` and ``spec``, the raw dict in ``data``."""

    path: Path
    model_config: ArchConfig
    spec: BatchSpec
    step: int
    loss: str
    data: dict
    gain: GainStaging = GainStaging(mode="none")


def make_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, *, step: int,
                    model_config: ArchConfig, model_name: str, loss: str, spec: BatchSpec,
                    train_config: dict | None = None, commit: str = "unknown",
                    gain: GainStaging = GainStaging(), extra: dict | None = None) -> dict:
    """The checkpoint dict of a bare (not compiled, not DDP-wrapped) ``model``; ``extra`` adds
    keys (e.g. ``best_valid``)."""
    return {**(extra or {}),
        "format": FORMAT, "version": VERSION,
        "model_config": model_config.to_dict(), "model_name": model_name,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step), "loss": loss, "spec": spec.to_header(),
        "train_config": train_config or {}, "commit": commit, "gain": gain.to_dict(),
    }


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass    # some filesystems do not sync directories
    finally:
        os.close(fd)


def atomic_save(obj: dict, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``.

    A crash or error mid-write leaves ``path`` as it was (absent or the previous version)
    and removes the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _replace_with_link(source: Path, dest: Path) -> None:
    """Make ``dest`` the same file as ``source`` atomically (hard link, else a copy)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        tmp.write_bytes(source.read_bytes())
    os.replace(tmp, dest)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read and validate a checkpoint; ValueError with the reason when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(f"cannot read checkpoint {path}: {str(exc)[:300]}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a stemstream separator checkpoint")
    if data.get("version") not in READABLE:
        raise ValueError(f"{path} has checkpoint version {data.get('version')!r}; this code reads {READABLE}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}")
    try:
        model_config = config_from_dict(data["model_config"])
        spec = BatchSpec.from_header(data["spec"])
        gain = GainStaging.from_dict(data.get("gain"))
    except (TypeError, ValueError, ProtocolError) as exc:
        raise ValueError(f"checkpoint {path} has a bad model config or spec (or gain record): {exc}") from None
    return LoadedCheckpoint(path, model_config, spec, int(data["step"]), str(data["loss"]), data, gain)


def load_separator(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, LoadedCheckpoint]:
    """The trained model of a checkpoint on ``device`` in eval mode, and the checkpoint."""
    ckpt = load_checkpoint(path, map_location="cpu")
    model = build_model(ckpt.model_config)
    model.load_state_dict(ckpt.data["model"])
    return model.to(device).eval(), ckpt


def config_mismatch(saved: ArchConfig, current: ArchConfig) -> list[str]:
    """``"field: saved -> current"`` for every model config field that differs (just ``kind``
    when the architectures differ)."""
    a, b = saved.to_dict(), current.to_dict()
    if a["kind"] != b["kind"]:
        return [f"kind: {a['kind']!r} -> {b['kind']!r}"]
    return [f"{key}: {a[key]!r} -> {b[key]!r}" for key in a if a[key] != b[key]]


def check_resume(ckpt: LoadedCheckpoint, current: ArchConfig, model_name: str) -> None:
    """ValueError naming the differing fields when ``current`` is not the checkpoint's model."""
    diff = config_mismatch(ckpt.model_config, current)
    if diff:
        saved = ckpt.data.get("model_name", ckpt.model_config.KIND)
        raise ValueError(
            f"cannot resume from {ckpt.path}: it holds model {saved!r}, this run builds "
            f"{model_name!r} and the configs differ ({'; '.join(diff)}); use the same --model "
            f"or a new --run-dir")


class CheckpointManager:
    """``run_dir/step-XXXXXXXX.pt`` (the newest ``keep`` of them) and ``run_dir/last.pt``."""

    def __init__(self, run_dir: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.run_dir / LAST

    def save_best(self, checkpoint: dict) -> Path:
        """Write ``best.pt`` atomically (not counted among the numbered ones)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return atomic_save(checkpoint, self.run_dir / BEST)

    def numbered(self) -> list[Path]:
        """Numbered checkpoints, oldest first."""
        return sorted(self.run_dir.glob("step-*.pt"))

    def save(self, checkpoint: dict) -> Path:
        """Write ``step-<step>.pt`` atomically, point ``last.pt`` at it, prune old ones."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = atomic_save(checkpoint, self.run_dir / f"step-{int(checkpoint['step']):08d}.pt")
        _replace_with_link(path, self.last)
        for old in self.numbered()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path
