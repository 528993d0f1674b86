"""``trainer eval`` / ``trainer report``: the unit's run, then its outputs (JSON, table, chart, HTML)."""
from __future__ import annotations

from pathlib import Path

from ..config import EvalConfig
from .song import format_table, run_song_eval, write_json


def run_eval(cfg: EvalConfig, curve=None) -> tuple[dict, str]:
    """Score ``cfg.checkpoints`` -> (result dict, text table); writes what ``cfg`` asks for
    (``json_out``, ``table_out``, ``plot_out``, ``report_dir``). ``curve``: CURVE keys for
    ``cfg.connect``."""
    if cfg.unit == "chunk":
        from .chunks import format_table as chunk_table, run_eval as run_chunk_eval

        result = run_chunk_eval(cfg)
        table = chunk_table(result)
    else:
        writer = None if cfg.report_dir is None else _writer(cfg)
        result = run_song_eval(cfg, on_excerpt=None if writer is None else writer.add, curve=curve)
        table = format_table(result)
        if cfg.json_out is not None:
            write_json(cfg.json_out, result)
        if cfg.plot_out is not None:
            from .figures import write_bar_chart

            write_bar_chart(cfg.plot_out, result)
        if writer is not None:
            writer.finish(result, table)
    if cfg.table_out is not None:
        Path(cfg.table_out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.table_out).write_text(table + "\n")
    return result, table


def _writer(cfg: EvalConfig):
    """The report writer, for the stems of the first checkpoint (all must share them)."""
    from ..checkpoint import load_checkpoint
    from .report import ReportWriter

    return ReportWriter(cfg.report_dir, list(load_checkpoint(cfg.checkpoints[0]).spec.stems))
