"""Model configs: presets round trip, version-1 dicts, TOML overrides, stream adaptation, `trainer models`."""
import pytest

from trainer.cli import main
from trainer.models import (PRESETS, DemucsConfig, FlatConvConfig, ResUNetConfig, UMXConfig, WaveNetConfig,
                            WaveUNetConfig, apply_overrides, config_from_dict, load_model_config, preset)

# the flat ModelConfig.to_dict() of version-1 checkpoints (wavenet and flatconv fields side by side)
V1_TINY = {"kind": "wavenet", "stems": 4, "stacks": 2, "blocks": 4, "channels": 16, "kernel": 3,
           "head": [32, 32], "gated": False, "input_kernel": 3, "head_kernel": 3, "flat_layers": 4,
           "flat_kernel": 65, "flat_channels": 64, "flat_skip": True}
V1_FLAT = {**V1_TINY, "kind": "flatconv", "channels": 128, "flat_kernel": 9, "flat_channels": 8, "flat_skip": False}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_its_dict(name):
    cfg = preset(name)
    data = cfg.to_dict()
    assert data["kind"] == cfg.KIND
    assert config_from_dict(data) == cfg


def test_version_1_dicts_become_their_kinds_configs():
    assert config_from_dict(V1_TINY) == preset("tiny")
    assert config_from_dict(V1_FLAT) == FlatConvConfig(layers=4, kernel=9, channels=8, skip=False)


def test_toml_sets_fields_on_the_preset(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("channels = 64\nhead = [128, 64]\ngated = true\n")
    assert load_model_config("seed", f) == WaveNetConfig(channels=64, head=(128, 64), gated=True)
    f.write_text('kind = "waveunet"\nlevels = 5\n')
    assert load_model_config("seed", f) == WaveUNetConfig(levels=5)
    f.write_text('preset = "resunet-tiny"\nkernel = 3\n')
    assert load_model_config("seed", f) == ResUNetConfig(levels=4, channels=8, kernel=3)
    assert load_model_config("tiny", None) == preset("tiny")


def test_toml_errors_name_the_problem(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("levelz = 3\n")
    with pytest.raises(ValueError, match=r"m.toml.*unknown wavenet config keys \['levelz'\]"):
        load_model_config("seed", f)
    f.write_text("channels = [\n")
    with pytest.raises(ValueError, match="cannot read model config"):
        load_model_config("seed", f)
    f.write_text("kernel = 4\n")
    with pytest.raises(ValueError, match="kernel must be a positive odd number"):
        load_model_config("seed", f)
    with pytest.raises(ValueError, match="unknown model kind 'rnn'"):
        apply_overrides(preset("seed"), {"kind": "rnn"})
    with pytest.raises(ValueError, match="cannot read model config"):
        load_model_config("seed", tmp_path / "missing.toml")


def test_for_stream_sets_stems_and_what_each_kind_takes_from_the_stream():
    assert preset("tiny").for_stream(22050, 5000, 3) == WaveNetConfig(stacks=2, blocks=4, channels=16,
                                                                       head=(32, 32), stems=3)
    assert preset("openunmix").for_stream(22050, 5000, 4) == UMXConfig(sample_rate=22050)
    assert preset("htdemucs").for_stream(48000, 96000, 2) == DemucsConfig(stems=2, sample_rate=48000, segment=96000)


def test_models_command_lists_presets_with_figures(capsys):
    assert main(["models", "tiny", "waveunet-tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    tiny = next(line for line in out if line.startswith("tiny "))
    assert tiny.split()[1:5] == ["wavenet", "15,220", "33", "67"]
    assert float(tiny.split()[5]) > 0                      # GFLOP per output second
    assert main(["models", "--no-flops"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:len(PRESETS) + 1]]
    assert listed == list(PRESETS)
    assert main(["models", "huge"]) == 2
