"""Evaluation of separators, as the field does it.

* ``excerpts``: held-out song excerpts rendered from a MIDI corpus (in-distribution and
  held-out-timbre soundfonts), deterministic from a seed.
* ``stems_dir``: real multitrack songs from folders (MUSDB18-HQ and Slakh2100 layouts).
* ``scores``: SI-SDR, SI-SDRi and BSS-eval v4 SDR/SIR/SAR (museval) per excerpt and stem.
* ``song``: ``run_song_eval``, the excerpt-level run (several checkpoints side by side,
  mixture and IRM-oracle baselines), its JSON result and text table.
* ``report``: the static HTML listening report; ``figures``: its pictures.
* ``chunks``: the chunk-level evaluation (``--unit chunk``).
"""
