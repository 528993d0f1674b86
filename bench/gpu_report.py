"""Render a `bench/gpu.sh` result (gpu-bench.json) as the markdown of docs/benchmarks.md's GPU section.

    python bench/gpu_report.py RESULTS/gpu-bench.json              # print the markdown
    python bench/gpu_report.py RESULTS/gpu-bench.json --write docs/benchmarks.md

``--write`` replaces what lies between the ``<!-- gpu-bench:begin -->`` and
``<!-- gpu-bench:end -->`` lines of that file. Skipped and failed parts are shown with their reason.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- gpu-bench:begin -->", "<!-- gpu-bench:end -->"


def _f(value, fmt: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + unit


def _status(part: dict | None) -> str | None:
    """None for an ok part, else the line that says why it has no figures."""
    if part is None:
        return "not run"
    if part["status"] == "skipped":
        return f"skipped: {part['reason']}"
    if part["status"] == "failed":
        return f"failed: {part['error']}"
    return None


def render_steps(part: dict) -> list[str]:
    amp = next((r["amp"] for r in part["rows"] if "amp" in r), "n/a")
    lines = [f"Step time of `{part['model']}` (forward + backward + Adam, autocast {amp}), mean over the "
             f"timed steps after warm-up; FLOPs counted by torch.utils.flop_counter."]
    if part.get("matmul_bf16_tflops"):
        lines.append(f"Measured 8192³ bf16 matmul on this card: {part['matmul_bf16_tflops']:.0f} TFLOP/s.")
    lines += ["", "| batch | torch.compile | step (ms) | GFLOP/step | TFLOP/s | share of datasheet peak | "
              "share of measured matmul |", "|---|---|---|---|---|---|---|"]
    matmul = part.get("matmul_bf16_tflops")
    for row in part["rows"]:
        mode = "on" if row["compiled"] else "off"
        if "error" in row:
            lines.append(f"| {row['batch']} | {mode} | {row['error']} | | | | |")
            continue
        share = _f(row.get("share_of_peak") and 100 * row["share_of_peak"], ".1f", " %")
        of_matmul = _f(matmul and 100 * row["tflops_per_s"] / matmul, ".1f", " %")
        lines.append(f"| {row['batch']} | {mode} | {row['step_ms']:.2f} | {row['flops_per_step'] / 1e9:.0f} | "
                     f"{row['tflops_per_s']:.3g} | {share} | {of_matmul} |")
    lines += [f"| {s['batch']} | {'on' if s['compiled'] else 'off'} | {s['reason']} | | | | |"
              for s in part.get("skipped", [])]
    return lines


def render_stream(part: dict) -> list[str]:
    lines = [f"`synth-server serve` with {part['workers']} workers ({part['cores']} cores), pool "
             f"{part['pool_size']}: **{part['kept_chunks_per_s']:.0f} kept chunks/s** (a greedy client at R = 1). "
             f"`trainer train` ({part['model']}, batch {part['batch']}) fed by it, R set by `synth-server ctl` for "
             f"{part['phase_s']:.0f} s each (first 30 % of each span left out):", "",
             "| R | steps/s | chunks/s | data-wait share | R seen | server kept chunks/s |", "|---|---|---|---|---|---|"]
    for p in part["phases"]:
        if "steps_per_s" not in p:
            lines.append(f"| {p['reuse']} | {p.get('note', 'no figures')} | | | | |")
            continue
        seen = ", ".join(str(r) for r in p["reuse_seen"]) or "n/a"
        lines.append(f"| {p['reuse']} | {p['steps_per_s']:.1f} | {p['chunks_per_s']:.0f} | "
                     f"{100 * p['wait_share']:.1f} % | {seen} | {_f(p['server_kept_per_s'], '.0f')} |")
    return lines


def render_eval(part: dict) -> list[str]:
    train = part["train"]
    lines = [f"`{part['model']}` trained from the stream (batch {part['batch']}, R stepped 1, 2, 4, then auto) for "
             f"{train['steps']} steps in {_f(train.get('seconds'), '.0f')} s; loss {_f(train.get('loss_start'), '.4f')}"
             f" → {_f(train.get('loss_end'), '.4f')}."]
    ev = part.get("eval", {})
    if "error" in ev:
        lines.append(f"`trainer eval` {ev['error']}")
    elif ev:
        lines += ["", f"`trainer eval`: SI-SDR (dB, mean) on {ev['chunks']} held-out chunks from {ev['songs']} "
                  f"songs of split `{ev['split']}`, same soundfont as training:", "",
                  "| stem | model | SI-SDRi | mixture | IRM oracle |", "|---|---|---|---|---|"]
        for name, row in list(ev["stems"].items()) + [("overall", ev["overall"])]:
            cells = [_f(row[k]["mean"], ".2f") for k in ("model", "improvement", "mixture", "oracle")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    amp = part.get("amp_check", {})
    if "error" in amp:
        lines.append(f"bf16-vs-fp32 check failed: {amp['error']}")
    elif amp:
        names = list(amp["trained"]["stems"])
        lines += ["", f"bf16 autocast vs fp32 output, SNR (dB) on {amp['chunks']} held-out chunks:", "",
                  "| model | " + " | ".join(names) + " | overall |", "|---" * (len(names) + 2) + "|"]
        for key, label in (("trained", f"trained (step {amp['step']})"), ("init", "at initialisation")):
            row = amp[key]
            lines.append(f"| {label} | " + " | ".join(f"{row['stems'][n]:.1f}" for n in names)
                         + f" | {row['overall']:.1f} |")
    return lines


RENDERERS = (("steps", "Step time and share of peak", render_steps),
             ("stream", "Server → trainer on one box", render_stream),
             ("train_eval", "Trained from the stream, evaluated", render_eval))


def render(result: dict) -> str:
    """The markdown of one result."""
    env = result["environment"]
    card = env.get("gpu") or "CPU (dry run)"
    lines = [f"`bench/gpu.sh` on {card} ({env.get('nvidia_smi') or 'no nvidia-smi'}), {env['cores']} cores, "
             f"Python {env['python']}, torch {env['torch']} (CUDA {env.get('cuda')}), bundle commit "
             f"`{env['bundle']['commit']}`, {result['started']}, time limit {result['time_limit_s']:.0f} s"
             f"{' — DRY RUN: tiny model on a CPU, these figures measure nothing' if result['dry_run'] else ''}."]
    if "error" in result:
        lines.append(f"\nThe run stopped: {result['error']}")
    for key, title, fn in RENDERERS:
        part = result["parts"].get(key)
        lines += ["", f"### {title}", ""]
        reason = _status(part)
        lines += [reason.capitalize() + "."] if reason else fn(part)
    return "\n".join(lines) + "\n"


def write_section(doc: Path, markdown: str) -> None:
    """Replace the text between the BEGIN and END markers of ``doc`` with ``markdown``."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{markdown}{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path)
    ap.add_argument("--write", type=Path, metavar="MARKDOWN", help="replace the gpu-bench section of this file")
    args = ap.parse_args()
    markdown = render(json.loads(args.result.read_text()))
    if args.write:
        write_section(args.write, markdown)
    else:
        print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
