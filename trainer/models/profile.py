"""Model figures for `trainer models` and the benchmark: parameters, context, FLOPs per output second.

FLOPs are counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention) plus the
LSTM layers, which it does not count (``8 * hidden * (input + hidden)`` per frame, direction and
layer: four gates, multiply-add); FFTs and element-wise operations are not counted. One forward
pass in eval mode at batch 1 over 1 s of target (exact models: plus their context) or a 1 s
window (padded models), at 44.1 kHz unless told otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainer.models.base import ArchConfig, Separator, count_parameters


@dataclass(frozen=True)
class ModelFigures:
    """``params``; ``context`` per side; ``receptive_field`` (None: whole input); ``flops_per_s``
    forward FLOPs per second of output; ``exact`` (see ``base``)."""

    kind: str
    params: int
    context: int
    receptive_field: int | None
    stride: int
    exact: bool
    flops_per_s: float


def _lstm_flops(model: nn.Module) -> tuple[list, list[int]]:
    """Forward hooks adding the FLOPs of every ``nn.LSTM`` call to a counter list."""
    total = [0]

    def hook(module: nn.LSTM, args, _out) -> None:
        x = args[0]
        steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        directions = 2 if module.bidirectional else 1
        size = module.input_size
        for _ in range(module.num_layers):
            total[0] += 8 * module.hidden_size * (size + module.hidden_size) * steps * directions
            size = module.hidden_size * directions

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.LSTM)]
    return handles, total


def forward_flops(model: Separator, length: int, target: int) -> int:
    """FLOPs of one eval-mode forward of a (1, 1, length) input giving ``target`` samples."""
    device = next(model.parameters()).device
    x = torch.zeros(1, 1, length, device=device)
    x[..., ::97] = 0.01                         # not all zeros: some models normalise by the std
    handles, lstm = _lstm_flops(model)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x, target)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counter.get_total_flops() + lstm[0]


def counting_model(cfg: ArchConfig, meta: bool | None = None) -> Separator:
    """The model of ``cfg`` to count FLOPs on: on the meta device (no memory, no compute) unless
    ``meta`` is False; by default real for padded models, whose STFTs and data-dependent code
    need real tensors."""
    from trainer.models import build_model

    if meta is None:
        meta = cfg.receptive_field() is not None
    if not meta:
        return build_model(cfg)
    with torch.device("meta"):
        return build_model(cfg)


def model_figures(cfg: ArchConfig, sample_rate: int = 44100, flops: bool = True) -> ModelFigures:
    """Figures of ``cfg`` adapted to a 1 s stream window at ``sample_rate`` (see the module doc);
    ``flops=False`` skips the forward pass (``flops_per_s`` is then NaN)."""
    ctx = cfg.context()
    padded = cfg.receptive_field() is None
    target = sample_rate - 2 * ctx if padded else sample_rate
    cfg = cfg.for_stream(sample_rate, target + 2 * ctx, cfg.stems)
    model = counting_model(cfg, meta=not (padded and flops))
    rate = forward_flops(model, target + 2 * ctx, target) * sample_rate / target if flops else float("nan")
    return ModelFigures(cfg.KIND, count_parameters(model), ctx, cfg.receptive_field(), cfg.stride(),
                        model.exact, rate)
