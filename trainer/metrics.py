"""Evaluation metrics (torch tensors in, torch tensors out; computed in float64).

* ``si_sdr``: scale-invariant SDR in dB per item, for arrays ``(..., time)``.
* ``si_sdr_improvement``: SI-SDR of the estimate minus SI-SDR of the mixture.
* ``irm_oracle``: ideal-ratio-mask oracle separation, an upper-bound style reference for models.

Numpy arrays can be passed through ``torch.from_numpy`` first.
"""
from __future__ import annotations

import torch


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB: (..., time) x (..., time) -> (...).

    Both signals are made zero-mean; the reference is scaled by the least-squares factor
    alpha = <e, r> / (<r, r> + eps) and SDR = 10 log10((|alpha r|^2 + eps) / (|e - alpha r|^2 + eps)).
    Multiplying the estimate by any nonzero constant leaves the score unchanged (up to eps).
    A silent reference gives a very negative score unless the estimate is silent too (0 dB).
    """
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    e = estimate.double()
    r = reference.double()
    e = e - e.mean(dim=-1, keepdim=True)
    r = r - r.mean(dim=-1, keepdim=True)
    alpha = (e * r).sum(dim=-1, keepdim=True) / (r.pow(2).sum(dim=-1, keepdim=True) + eps)
    projection = alpha * r
    noise = e - projection
    signal_power = projection.pow(2).sum(dim=-1) + eps
    noise_power = noise.pow(2).sum(dim=-1) + eps
    return 10.0 * torch.log10(signal_power / noise_power)


def si_sdr_improvement(
    estimate: torch.Tensor, reference: torch.Tensor, mixture: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """si_sdr(estimate, reference) - si_sdr(mixture, reference), per item (...).

    ``estimate`` and ``reference`` are (..., time); ``mixture`` must broadcast to them, e.g.
    (batch, 1, time) against (batch, stems, time).
    """
    mix = mixture.expand(reference.shape)
    return si_sdr(estimate, reference, eps) - si_sdr(mix, reference, eps)


def irm_oracle(
    stems: torch.Tensor, n_fft: int = 2048, hop: int = 512, power: float = 1.0, eps: float = 1e-12
) -> torch.Tensor:
    """Ideal ratio mask oracle: (stems, time) or (batch, stems, time) -> estimates, same shape.

    The mixture is the sum of the stems. With S = STFT (periodic Hann window, centred
    zero-padded frames), mask_s = |S_s|**power / sum_j |S_j|**power (power=1: magnitude ratio,
    power=2: Wiener-like power ratio); each estimate is the inverse STFT of mask_s * STFT(mixture),
    trimmed to the input length. Time-frequency bins where every stem is silent get mask 0.
    """
    if stems.dim() not in (2, 3):
        raise ValueError(f"stems must be (stems, time) or (batch, stems, time), got {tuple(stems.shape)}")
    x = stems.double() if stems.dim() == 3 else stems.double().unsqueeze(0)
    batch, count, time = x.shape
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)

    def stft(signal: torch.Tensor) -> torch.Tensor:
        return torch.stft(signal, n_fft, hop_length=hop, window=window, center=True,
                          pad_mode="constant", return_complex=True)

    spec = stft(x.reshape(batch * count, time)).reshape(batch, count, n_fft // 2 + 1, -1)
    magnitude = spec.abs().pow(power)
    mask = magnitude / (magnitude.sum(dim=1, keepdim=True) + eps)
    mixture = stft(x.sum(dim=1)).unsqueeze(1)
    masked = (mask * mixture).reshape(batch * count, n_fft // 2 + 1, -1)
    out = torch.istft(masked, n_fft, hop_length=hop, window=window, center=True, length=time)
    out = out.reshape(batch, count, time).to(stems.dtype)
    return out if stems.dim() == 3 else out.squeeze(0)
