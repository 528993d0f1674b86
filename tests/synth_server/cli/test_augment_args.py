"""--augment flags parse into the typed AugmentConfig the source config carries."""
from pathlib import Path

import pytest

from synth_server.augment_config import DEFAULT_PRESET, PRESETS
from synth_server.cli.args import UsageError
from synth_server.cli.main import build_parser
from synth_server.cli.serve import serve_config


def source(*flags):
    args = build_parser().parse_args(["serve", "--corpus", str(Path(__file__).parent), *flags])
    return serve_config(args).source


def test_default_preset_and_explicit_presets():
    assert source().augment == PRESETS[DEFAULT_PRESET]
    assert source("--augment", "none").augment == PRESETS["none"] and not source("--augment", "none").augment.enabled
    assert source("--augment", "full").augment == PRESETS["full"]


def test_toml_holdout_and_pool(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[augment.reverb]\np = 0.9\n[augment.soundfont]\nholdout = ['A']\n")
    aug = source("--augment", "light", "--augment-config", str(path), "--holdout-soundfont", "B",
                 "--holdout-soundfont", "A").augment
    assert aug.reverb.p == 0.9 and aug.soundfont.holdout == ("A", "B") and aug.eq == PRESETS["light"].eq
    held = source("--holdout-soundfont", "A", "--soundfont-pool", "holdout", "--split", "test").augment
    assert held.soundfont.pool == "holdout" and held.soundfont.p == 1.0


@pytest.mark.parametrize("flags", [["--soundfont-pool", "holdout", "--holdout-soundfont", "A"],   # train split
                                   ["--soundfont-pool", "holdout", "--split", "test"]])          # nothing held out
def test_bad_pool_is_a_usage_error(flags):
    with pytest.raises(UsageError):
        source(*flags)


def test_bad_toml_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[augment.reverb]\nwetness = 1\n")
    with pytest.raises(UsageError, match="unknown setting"):
        source("--augment-config", str(path))
