"""Training losses for waveform separation.

Every loss takes ``estimate, target`` of shape ``(batch, stems, time)`` and optional per-stem
``weights`` of shape ``(stems,)`` and returns ``(total, per_stem)``:

* ``per_stem`` (stems,): the unweighted loss of each stem (keeps the graph; detach to log),
* ``total`` (scalar): ``mean_s(weights[s] * per_stem[s])``, so with no weights it is the plain
  mean over stems, and scaling all weights by c scales ``total`` by c.

Extra options (``spectral_weight``, ``lam``, ...) are keyword-only; bind them with
``functools.partial`` to get a ``(estimate, target, weights)`` callable.

``LOSSES`` registers each loss by name with its degree (how it scales with the signal level);
``get_loss("mae+0.5*mrstft", balance=True)`` builds a weighted sum, optionally level-balanced per
stem (see ``get_loss``). Training calls losses on gain-staged signals (``trainer.gain``).
"""
from __future__ import annotations

from dataclasses import dataclass
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


STFT_SPECTRAL_WEIGHT = 2.0     # spectral term ~half the gradient norm on real chunks


def stft_mae_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    n_fft: int = 512,
    hop: int = 128,
    spectral_weight: float = STFT_SPECTRAL_WEIGHT,
) -> LossResult:
    """Waveform MAE + ``spectral_weight`` * MAE between linear magnitude spectrograms.

    The spectrogram term is the mean over batch, frequency and frames of ||E| - |T|| using
    ``magnitude_spectrogram`` (normalized STFT, so one bin's magnitude is on the scale of one
    waveform sample). Both terms are degree 1 in the signal level, so their ratio does not depend
    on how loud the stream is; at the default weight the spectral term carries a real share of the
    gradient on real chunks (measured in tests/trainer/test_losses.py). At an all-zero estimate the
    magnitude has no gradient (any magnitude loss is flat there); the waveform term carries it.
    """
    _check(estimate, target, weights)
    wave = (estimate - target).abs().mean(dim=(0, 2))
    diff = magnitude_spectrogram(estimate, n_fft, hop) - magnitude_spectrogram(target, n_fft, hop)
    spectral = diff.abs().mean(dim=(0, 2, 3))
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


MRSTFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))   # (n_fft, hop, window)
MAG_FLOOR = 1e-8    # power floor of the log magnitudes (auraloss's eps)


def _stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """(batch, stems, time) -> (batch, stems, n_fft//2 + 1, frames): sqrt(max(|STFT|^2, floor)),
    periodic Hann of ``win`` samples, centred reflect-padded frames (auraloss's STFT)."""
    batch, stems, time = x.shape
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    spec = torch.stft(x.reshape(batch * stems, time), n_fft, hop, win, window, return_complex=True)
    power = (spec.real.pow(2) + spec.imag.pow(2)).clamp_min(MAG_FLOOR)
    return power.sqrt().reshape(batch, stems, spec.shape[-2], spec.shape[-1])


def mrstft_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    resolutions: tuple[tuple[int, int, int], ...] = MRSTFT_RESOLUTIONS,
) -> LossResult:
    """Multi-resolution STFT loss (Parallel WaveGAN; ``auraloss.freq.MultiResolutionSTFTLoss``
    with its defaults), per stem: the mean over ``resolutions`` of spectral convergence
    ``||T| - |E||_F / ||T||_F`` plus log-magnitude L1 ``mean |log|T| - log|E||``, each taken over
    batch, frequency and frames of one stem. Scale-invariant up to the magnitude floor.
    """
    _check(estimate, target, weights)
    if target.shape[-1] <= max(n for n, _, _ in resolutions) // 2:
        raise ValueError(f"mrstft needs more than {max(n for n, _, _ in resolutions) // 2} samples "
                         f"(reflect padding), got {target.shape[-1]}")
    total = estimate.new_zeros(estimate.shape[1])
    for n_fft, hop, win in resolutions:
        e, t = _stft_magnitude(estimate, n_fft, hop, win), _stft_magnitude(target, n_fft, hop, win)
        convergence = (t - e).pow(2).sum(dim=(0, 2, 3)).sqrt() / t.pow(2).sum(dim=(0, 2, 3)).sqrt()
        log_magnitude = (t.log() - e.log()).abs().mean(dim=(0, 2, 3))
        total = total + convergence + log_magnitude
    return _combine(total / len(resolutions), weights)


SI_SDR_EPS = 1e-8
SILENT_SHARE = 1e-6     # a stem below this share of the item's stem energy is left out of SI-SDR


def neg_si_sdr_loss(
    estimate: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> LossResult:
    """Negative SI-SDR in dB, per stem the mean over items where the stem sounds.

    Per item and stem (zero-mean signals): alpha = <e, t> / <t, t>, SI-SDR = 10 log10((|alpha
    t|^2 + eps) / (|e - alpha t|^2 + eps)). Items where the stem's energy is below
    ``SILENT_SHARE`` of the item's total stem energy are left out (SI-SDR against silence is
    meaningless); a stem silent in the whole batch contributes 0. Lower is better; perfect -> about
    -10 log10(eps-limited), so totals are negative.
    """
    _check(estimate, target, weights)
    e = estimate - estimate.mean(dim=-1, keepdim=True)
    t = target - target.mean(dim=-1, keepdim=True)
    energy = t.pow(2).sum(dim=-1)                                   # (batch, stems)
    alpha = (e * t).sum(dim=-1, keepdim=True) / (energy.unsqueeze(-1) + SI_SDR_EPS)
    projection = alpha * t
    sdr = 10 * torch.log10((projection.pow(2).sum(-1) + SI_SDR_EPS)
                           / ((e - projection).pow(2).sum(-1) + SI_SDR_EPS))
    active = (energy >= SILENT_SHARE * energy.sum(dim=1, keepdim=True)).to(sdr.dtype)
    per_stem = -(sdr * active).sum(dim=0) / active.sum(dim=0).clamp_min(1.0)
    return _combine(per_stem, weights)


@dataclass(frozen=True)
class LossTerm:
    """A registered loss and its ``degree``: the loss scales as level**degree when estimate
    and target are scaled together (0: scale-invariant), which ``balance`` divides out."""

    fn: LossFn
    degree: int


LOSSES: dict[str, LossTerm] = {
    "mse": LossTerm(mse_loss, 2),
    "mae": LossTerm(mae_loss, 1),
    "stft": LossTerm(stft_mae_loss, 1),
    "diff": LossTerm(difference_loss, 1),
    "mrstft": LossTerm(mrstft_loss, 0),
    "sisdr": LossTerm(neg_si_sdr_loss, 0),
}
LEVEL_FLOOR = 1e-3      # stem level floor for balancing (-60 dB of a unit-RMS mixture)


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """"mae+0.5*mrstft" -> [(1.0, "mae"), (0.5, "mrstft")]; ValueError naming the bad part."""
    terms = []
    for part in spec.split("+"):
        weight, _, name = part.strip().rpartition("*")
        name = name.strip()
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r} in {spec!r}; choose from {sorted(LOSSES)}, "
                             "combined as e.g. mae+mrstft or mae+0.5*sisdr")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad loss weight {weight!r} in {spec!r}") from None
        if not w > 0:
            raise ValueError(f"loss weights must be > 0, got {w} in {spec!r}")
        terms.append((w, name))
    if len({name for _, name in terms}) != len(terms):
        raise ValueError(f"loss {spec!r} names a term twice")
    return terms


def stem_levels(target: torch.Tensor) -> torch.Tensor:
    """RMS of each stem over batch and time, floored at ``LEVEL_FLOOR``, no gradient: (stems,)."""
    return target.detach().pow(2).mean(dim=(0, 2)).sqrt().clamp_min(LEVEL_FLOOR)


def get_loss(spec: str, balance: bool = False) -> LossFn:
    """The loss ``spec`` names (one name or a "+" combination, ``parse_loss``) as a
    ``(estimate, target, weights) -> (total, per_stem)`` callable.

    With ``balance`` each term's per-stem value is divided by ``stem_levels(target)**degree``,
    so a stem's share of the loss does not depend on how loud it is (a quiet drum stem weighs as
    much as a loud piano), and terms of different degree become comparable numbers. ``per_stem``
    is then the sum of the weighted, balanced terms.
    """
    terms = parse_loss(spec)
    if len(terms) == 1 and terms[0][0] == 1.0 and not balance:
        return LOSSES[terms[0][1]].fn

    def combined(estimate: torch.Tensor, target: torch.Tensor,
                 weights: torch.Tensor | None = None) -> LossResult:
        levels = stem_levels(target) if balance else None
        per_stem = 0.0
        for w, name in terms:
            term = LOSSES[name]
            _, values = term.fn(estimate, target)
            if levels is not None and term.degree:
                values = values / levels.pow(term.degree)
            per_stem = per_stem + w * values
        return _combine(per_stem, weights)

    return combined
