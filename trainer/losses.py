"""Training losses for waveform separation.

Every loss takes ``estimate, target`` of shape ``(batch, stems, time)`` and optional per-stem
``weights`` of shape ``(stems,)`` and returns ``(total, per_stem)``:

* ``per_stem`` (stems,): the unweighted loss of each stem (keeps the graph; detach to log),
* ``total`` (scalar): ``mean_s(weights[s] * per_stem[s])``, so with no weights it is the plain
  mean over stems, and scaling all weights by c scales ``total`` by c.

Extra options (``spectral_weight``, ``lam``, ...) are keyword-only; bind them with
``functools.partial`` to get a ``(estimate, target, weights)`` callable.
"""
from __future__ import annotations

from typing import Callable

import torch

LossResult = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[..., LossResult]


def _check(estimate: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> None:
    if estimate.dim() != 3 or estimate.shape != target.shape:
        raise ValueError(
            f"estimate and target must both be (batch, stems, time); got {tuple(estimate.shape)} "
            f"and {tuple(target.shape)}"
        )
    if weights is not None and tuple(weights.shape) != (estimate.shape[1],):
        raise ValueError(f"weights must be ({estimate.shape[1]},) (one per stem), got {tuple(weights.shape)}")


def _combine(per_stem: torch.Tensor, weights: torch.Tensor | None) -> LossResult:
    if weights is None:
        return per_stem.mean(), per_stem
    return (weights.to(per_stem) * per_stem).mean(), per_stem


def mse_loss(
    estimate: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> LossResult:
    """Mean squared waveform error per stem (mean over batch and time)."""
    _check(estimate, target, weights)
    return _combine((estimate - target).pow(2).mean(dim=(0, 2)), weights)


def mae_loss(
    estimate: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> LossResult:
    """Mean absolute waveform error per stem (mean over batch and time)."""
    _check(estimate, target, weights)
    return _combine((estimate - target).abs().mean(dim=(0, 2)), weights)


def magnitude_spectrogram(x: torch.Tensor, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """|STFT| with a periodic Hann window, zero-padded centred frames, ``normalized=True``.

    (batch, stems, time) -> (batch, stems, n_fft//2 + 1, frames). Any time >= 1 works.
    """
    batch, stems, time = x.shape
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x.reshape(batch * stems, time), n_fft, hop_length=hop, window=window,
        center=True, pad_mode="constant", normalized=True, return_complex=True,
    )
    return spec.abs().reshape(batch, stems, spec.shape[-2], spec.shape[-1])


def stft_mae_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    n_fft: int = 512,
    hop: int = 128,
    spectral_weight: float = 1.0,
) -> LossResult:
    """Waveform MAE + ``spectral_weight`` * MSE between linear magnitude spectrograms.

    The spectrogram term is the mean over batch, frequency and frames of (|E| - |T|)**2 using
    ``magnitude_spectrogram`` (normalized STFT, so its scale is comparable to the waveform's).
    """
    _check(estimate, target, weights)
    wave = (estimate - target).abs().mean(dim=(0, 2))
    diff = magnitude_spectrogram(estimate, n_fft, hop) - magnitude_spectrogram(target, n_fft, hop)
    spectral = diff.pow(2).mean(dim=(0, 2, 3))
    return _combine(wave + spectral_weight * spectral, weights)


def difference_matrix(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """a[i, j] = mean over batch and time of |estimate_i - target_j|; (stems, stems)."""
    return (estimate.unsqueeze(2) - target.unsqueeze(1)).abs().mean(dim=(0, 3))


def difference_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    lam: float = 0.1,
) -> LossResult:
    """Seed-paper discriminative loss: mean diagonal - lam * mean off-diagonal of ``a``.

    ``a = difference_matrix(estimate, target)``. The diagonal is each stem's MAE against its own
    target; the off-diagonal is its distance to the *other* stems' targets, which the loss
    maximises (pushing estimates away from the wrong sources). Because that term is subtracted,
    the loss is negative once the estimates are good: a perfect estimate gives
    ``-lam * mean off-diagonal``, not 0. per_stem[i] = a[i, i] - lam * mean_{j != i} a[i, j], so
    the unweighted total equals the formula above. With one stem it is plain MAE.
    """
    _check(estimate, target, weights)
    a = difference_matrix(estimate, target)
    stems = a.shape[0]
    diagonal = a.diagonal()
    if stems == 1:
        return _combine(diagonal, weights)
    off = (a.sum(dim=1) - diagonal) / (stems - 1)
    return _combine(diagonal - lam * off, weights)


LOSSES: dict[str, LossFn] = {
    "mse": mse_loss,
    "mae": mae_loss,
    "stft": stft_mae_loss,
    "diff": difference_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss called ``name``; ValueError listing the choices for an unknown name."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
