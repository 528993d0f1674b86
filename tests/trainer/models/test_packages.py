"""Package models: Open-Unmix without torchaudio, its Wiener filter, clear errors when a package is missing."""
import importlib.util
import sys

import pytest
import torch

from trainer.models import build_model, preset
from trainer.models.umx import load_openunmix

needs_openunmix = pytest.mark.skipif(importlib.util.find_spec("openunmix") is None, reason="openunmix not installed")


@needs_openunmix
@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None, reason="torchaudio is installed")
def test_openunmix_loads_without_torchaudio_and_leaves_it_missing():
    model, filtering = load_openunmix()
    assert model.OpenUnmix.__name__ == "OpenUnmix" and callable(filtering.wiener)
    with pytest.raises(ImportError):
        import torchaudio  # noqa: F401


@needs_openunmix
def test_openunmix_wiener_estimates_sum_to_the_mixture():
    """The package's Wiener filter splits the mixture STFT among the stems (gains sum to 1), so
    the eval-mode stems add up to the mixture; the training path (mixture phase) does not."""
    torch.manual_seed(0)
    model = build_model(preset("openunmix-tiny"))
    ctx, target = model.context, 4096
    x = torch.randn(1, 1, target + 2 * ctx) * 0.1
    mixture = x[0, 0, ctx:ctx + target]
    with torch.no_grad():
        wiener = model.eval()(x, target)[0]
        plain = model.train()(x, target)[0]
    assert (wiener.sum(0) - mixture).pow(2).mean() < 1e-6 * mixture.pow(2).mean()
    assert (plain.sum(0) - mixture).pow(2).mean() > 1e-2 * mixture.pow(2).mean()


def test_missing_openunmix_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    for name in [m for m in sys.modules if m == "openunmix" or m.startswith("openunmix.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openunmix" else real(name, *a))
    with pytest.raises(ValueError, match="needs the openunmix package: pip install --no-deps openunmix"):
        build_model(preset("openunmix-tiny"))


@pytest.mark.parametrize("name,module", [("htdemucs-tiny", "demucs.htdemucs"), ("hdemucs-tiny", "demucs.hdemucs")])
def test_missing_demucs_is_a_clear_error(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)     # makes `import demucs.<module>` fail
    with pytest.raises(ValueError, match=r"needs the demucs package .*pip install --no-deps demucs"):
        build_model(preset(name))
