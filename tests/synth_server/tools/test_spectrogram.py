"""Shared dB scale: a silent stem is drawn at the bottom of the scale, a quiet one below the loud one."""
import numpy as np

from synth_server.config import AudioConfig
from synth_server.tools.dump import write_spectrogram
from synth_server.tools.spectrogram import FLOOR_DB, RANGE_DB, draw_spectrogram, plt, shared_range, spectrogram_db

RATE = 8000


def test_silence_is_black_and_levels_compare():
    t = np.arange(RATE) / RATE
    loud = 0.5 * np.sin(2 * np.pi * 440 * t)
    quiet = loud / 100                                          # -40 dB
    silent = np.zeros_like(t)
    assert spectrogram_db(silent).max() == FLOOR_DB
    vmin, vmax = shared_range([loud, quiet, silent])
    assert vmax == spectrogram_db(loud).max() and vmax - vmin == RANGE_DB
    assert vmax == np.float32(20 * np.log10(0.5)) or abs(vmax - 20 * np.log10(0.5)) < 1.0   # a -6 dBFS sine
    fig, axes = plt.subplots(3, 1)
    shown = []
    for ax, x in zip(axes, (loud, quiet, silent)):
        draw_spectrogram(ax, x, RATE, (vmin, vmax))
        image = ax.images[0]
        shown.append(np.clip(image.norm(image.get_array()), 0, 1).max())
    plt.close(fig)
    assert shown[0] == 1.0 and abs(shown[1] - 0.5) < 0.05 and shown[2] == 0.0    # -40 dB: half of 80 dB


def test_dump_spectrogram_is_written(tmp_path):
    stems = np.zeros((2, 3000), np.float32)
    stems[0] = 0.1 * np.random.default_rng(0).standard_normal(3000)
    write_spectrogram(tmp_path / "s.png", stems, ["a", "silent"], AudioConfig(RATE, 1000, 1000))
    assert (tmp_path / "s.png").stat().st_size > 2000
