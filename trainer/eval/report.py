"""The static HTML listening report: ``DIR/index.html`` plus its audio and pictures.

Per excerpt: players for the mixture, each stem's reference and each model's estimate (FLAC,
16-bit; every file of an excerpt gets the same gain, the mixture's peak at -1 dBFS, so levels
compare), and beside each a waveform over a spectrogram, all of the excerpt on one shared dB
scale (silence is black); the scores under each estimate. On top: the summary table and bar
chart per model and stem, and one table of every excerpt-stem that sorts by any column (click
a header), so the worst cases are one click away. ``ReportWriter.add`` is called per excerpt
while the evaluation runs (no audio is kept); ``finish`` writes the page.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from synth_server.tools.spectrogram import save_picture, shared_range

from .figures import LABELS, systems_of, write_bar_chart
from .material import Excerpt
from .scores import METRICS
from .song import write_json

HEADROOM = 10 ** (-1 / 20)         # the mixture's peak after the excerpt's gain (-1 dBFS)
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => {
  const col = th.cellIndex, body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const up = th.dataset.dir !== 'asc'; th.dataset.dir = up ? 'asc' : 'desc';
  const key = r => { const v = r.cells[col].dataset.v ?? r.cells[col].textContent;
                     const x = parseFloat(v); return isNaN(x) ? (v === '' ? Infinity : v) : x; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return up ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}));
"""
STYLE = ("body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}td,th{padding:3px 7px;"
         "border-bottom:1px solid #ddd;font-size:13px;vertical-align:top}th{cursor:pointer;background:#f3f3f3}"
         "audio{width:260px;height:30px;display:block}section{margin:24px 0;border-top:2px solid #999}"
         ".s{font-size:12px;color:#333}.na{color:#999}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _score_line(entry: dict | None) -> str:
    if entry is None:
        return "<div class='s na'>silent reference: not scored</div>"
    parts = [f"{m.upper().replace('_', '-')} {_fmt(entry.get(m))}" for m in METRICS if m in entry]
    return f"<div class='s'>{' &middot; '.join(parts)}</div>"


class ReportWriter:
    """Collects one section per excerpt in ``out``; ``finish(result, table)`` writes index.html."""

    def __init__(self, out: Path, stems: list[str]) -> None:
        self.out, self.stems = Path(out), list(stems)
        self.out.mkdir(parents=True, exist_ok=True)
        self.sections: list[str] = []
        self.rows: list[tuple[str, str, str, str, dict]] = []     # condition, excerpt id, anchor, stem, scores

    def _media(self, folder: Path, name: str, wave: np.ndarray, rate: int, gain: float,
               vrange: tuple[float, float], peak: float) -> str:
        """Write ``name``.flac and ``name``.png under ``folder``; the cell's HTML."""
        audio, picture = folder / f"{name}.flac", folder / f"{name}.png"
        sf.write(audio, np.clip(wave * gain, -1.0, 1.0).astype(np.float32), rate, subtype="PCM_16")
        save_picture(picture, wave, rate, vrange, peak)
        rel = folder.relative_to(self.out).as_posix()
        return (f"<audio controls preload='none' src='{rel}/{name}.flac'></audio>"
                f"<img src='{rel}/{name}.png' alt='{html.escape(name)}' width=252>")

    def add(self, condition: str, excerpt: Excerpt, estimates: dict, scores: dict) -> None:
        """One excerpt's section: ``estimates`` system -> (stems, time), ``scores`` system -> per stem."""
        anchor = _slug(f"{condition}-{len(self.sections):03d}-{excerpt.id}")
        folder = self.out / "media" / anchor
        folder.mkdir(parents=True, exist_ok=True)
        models = [s for s in estimates if s != "oracle"]
        signals = [excerpt.mixture, *excerpt.stems] + [w for s in models for w in estimates[s]]
        vrange = shared_range(signals)
        peak = max(float(np.abs(excerpt.mixture).max()), 1e-6)
        gain = HEADROOM / peak
        rate = excerpt.sample_rate
        head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
        mix = self._media(folder, "mixture", excerpt.mixture, rate, gain, vrange, peak)
        lines = [f"<tr><td>mixture</td><td>{mix}</td>"
                 + "<td></td>" * len(models) + "</tr>"]
        for s, stem in enumerate(self.stems):
            cells = [self._media(folder, f"ref_{_slug(stem)}", excerpt.stems[s], rate, gain, vrange, peak)]
            for m in models:
                cells.append(self._media(folder, f"{_slug(m)}_{_slug(stem)}", estimates[m][s], rate, gain,
                                         vrange, peak) + _score_line(scores[m][s]))
            base = " &middot; ".join(f"{LABELS[b]}: SI-SDR {_fmt((scores[b][s] or {}).get('si_sdr'))}"
                                     for b in ("mixture", "oracle"))
            lines.append(f"<tr><td>{html.escape(stem)}<div class='s'>{base}</div></td>"
                         + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            self.rows.append((condition, excerpt.id, anchor, stem, {k: v[s] for k, v in scores.items()}))
        where = (f"{html.escape(excerpt.path)} from {excerpt.start / rate:.2f} s, "
                 f"{len(excerpt.mixture) / rate:.1f} s" + (f", soundfont {html.escape(excerpt.soundfont)}"
                                                            if excerpt.soundfont else ""))
        self.sections.append(
            f"<section id='{anchor}'><h3>{html.escape(condition)}: {html.escape(excerpt.id)}</h3><p>{where}; "
            f"pictures share one dB scale ({vrange[0]:.0f} to {vrange[1]:.0f} dB) and one amplitude scale</p>"
            f"<table><tr><th>stem</th><th>reference</th>{head}</tr>{''.join(lines)}</table></section>")

    def _summary(self, result: dict) -> str:
        systems = systems_of(result)
        metrics = [m for m in METRICS if result["bss"] is not None or m in ("si_sdr", "si_sdri")]
        out = []
        for cond in result["conditions"]:
            head = "".join(f"<th>{m.upper().replace('_', '-')}</th>" for m in metrics)
            rows = []
            for stem in result["stems"]:
                for system in systems:
                    e = cond["summary"][system][stem]
                    cells = "".join(f"<td>{_fmt(e.get(m, {}).get('median'))}</td>" for m in metrics)
                    rows.append(f"<tr><td>{html.escape(stem)}</td><td>{html.escape(LABELS.get(system, system))}"
                                f"</td>{cells}<td>{e['excerpts']}</td><td>{e['skipped_silent']}</td></tr>")
            gap = ""
            if "gap_db" in cond:
                gap = "<p>timbre gap (in-distribution minus held-out median, dB): " + "; ".join(
                    f"{html.escape(LABELS.get(sys_, sys_))} {stem} SI-SDR {_fmt(g['si_sdr'])} SDR {_fmt(g['sdr'])}"
                    for sys_, per in cond["gap_db"].items() for stem, g in per.items()) + "</p>"
            out.append(f"<h3>{html.escape(cond['name'])} (medians over excerpts)</h3><table class='sortable'>"
                       f"<thead><tr><th>stem</th><th>system</th>{head}<th>n</th><th>skipped</th></tr></thead>"
                       f"<tbody>{''.join(rows)}</tbody></table>{gap}")
        return "".join(out)

    def _index(self, result: dict) -> str:
        systems = systems_of(result)
        metric = ("sdr", "SDR") if result["bss"] is not None else ("si_sdri", "SI-SDRi")
        head = "".join(f"<th>{html.escape(LABELS.get(s, s))} SI-SDR</th><th>{metric[1]}</th>" for s in systems)
        rows = []
        for condition, excerpt_id, anchor, stem, scores in self.rows:
            cells = []
            for s in systems:
                entry = scores[s] or {}
                for key in ("si_sdr", metric[0]):
                    v = entry.get(key)
                    cells.append(f"<td data-v='{'' if v is None else v}'>{_fmt(v)}</td>")
            rows.append(f"<tr><td>{html.escape(condition)}</td><td><a href='#{anchor}'>{html.escape(excerpt_id)}"
                        f"</a></td><td>{html.escape(stem)}</td>{''.join(cells)}</tr>")
        return (f"<h2>Every excerpt and stem (click a header to sort)</h2><table class='sortable' id='excerpts'>"
                f"<thead><tr><th>condition</th><th>excerpt</th><th>stem</th>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def finish(self, result: dict, table: str) -> Path:
        """Write eval.json, table.txt, summary.png and index.html; returns the page's path."""
        write_json(self.out / "eval.json", result)
        (self.out / "table.txt").write_text(table + "\n")
        write_bar_chart(self.out / "summary.png", result)
        models = "".join(f"<li>{html.escape(m['name'])}: {html.escape(m['checkpoint'])}, step {m['step']}, "
                         f"commit {html.escape(str(m['commit'])[:12])}</li>" for m in result["models"])
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>stemstream listening report</title>"
                f"<style>{STYLE}</style></head><body><h1>stemstream listening report</h1><ul>{models}</ul>"
                f"<p><a href='eval.json'>eval.json</a> &middot; <a href='table.txt'>table.txt</a></p>"
                f"<img src='summary.png' alt='summary chart'>{self._summary(result)}{self._index(result)}"
                f"{''.join(self.sections)}<script>{SORT_JS}</script></body></html>")
        path = self.out / "index.html"
        path.write_text(page)
        return path
