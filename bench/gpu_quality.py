"""What the benchmark's training run is worth: its log reduced to a summary, and the bf16
autocast vs fp32 agreement of its checkpoint (and of the same model at initialisation).

The seed WaveNet matched fp32 to only 12 dB SNR at initialisation on raw-level input (the input
conv's biases swamp a 0.03-RMS mixture), so the check reports both.
"""
from __future__ import annotations

from pathlib import Path

import torch


def training_summary(rows: list[dict]) -> dict:
    if not rows:
        return {"steps": 0}
    head, tail = rows[:3], rows[-3:]
    every = max(1, len(rows) // 40)
    return {"steps": rows[-1]["step"], "seconds": rows[-1]["time"] - rows[0]["time"],
            "loss_start": sum(r["loss"] for r in head) / len(head),
            "loss_end": sum(r["loss"] for r in tail) / len(tail),
            "reuse_seen": sorted({r["reuse"] for r in rows if r.get("reuse") is not None}),
            "curve": [[r["step"], round(r["time"] - rows[0]["time"], 1), r["loss"]] for r in rows[::every]]}


def amp_agreement(checkpoint: Path, corpus: Path, soundfont: Path, n: int, device: torch.device) -> dict:
    """SNR (dB) of the bf16-autocast estimate against fp32, per stem, on held-out test chunks,
    for the trained checkpoint and for the same model at initialisation."""
    from synth_server.config import AudioConfig, CorpusConfig, RenderConfig
    from trainer.checkpoint import load_separator
    from trainer.eval.chunks import EXCERPT_S, classes_for, estimate, eval_chunks
    from trainer.models import build_model
    from trainer.separate import stem_names

    model, ckpt = load_separator(checkpoint, device)
    names = stem_names(model, ckpt)
    audio = AudioConfig(ckpt.spec.sample_rate, ckpt.spec.target, ckpt.spec.context)
    stems, _, _ = eval_chunks(CorpusConfig(root=corpus, classes=classes_for(names)), audio,
                              RenderConfig(soundfont=soundfont, excerpt=EXCERPT_S), "test", n, 1234)
    stems = torch.from_numpy(stems)

    def snr(m) -> dict:
        fp32 = estimate(m, stems, audio.target, device, 16, ckpt.gain).double()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = estimate(m, stems, audio.target, device, 16, ckpt.gain).double()
        per = 10 * torch.log10(fp32.pow(2).sum((0, 2)) / (fp32 - bf16).pow(2).sum((0, 2)).clamp_min(1e-30))
        total = 10 * torch.log10(fp32.pow(2).sum() / (fp32 - bf16).pow(2).sum().clamp_min(1e-30))
        return {"stems": {k: round(v, 2) for k, v in zip(names, per.tolist())}, "overall": round(total.item(), 2)}

    torch.manual_seed(0)
    fresh = build_model(ckpt.model_config).to(device).eval()
    return {"chunks": len(stems), "step": ckpt.step, "trained": snr(model), "init": snr(fresh)}
