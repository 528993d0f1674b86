"""Small checkpoints at 8 kHz and a tiny corpus for the excerpt-level evaluation tests."""
import pytest
import torch

from synth_server.config import SPLITS, CorpusConfig
from synth_server.protocol import BatchSpec
from synth_server.synth.corpus import build_index
from trainer.checkpoint import make_checkpoint
from trainer.models import build_model, preset

STEMS = ("drums", "piano", "strings", "bass")
RATE = 8000


def save_tiny(path, seed: int, rate: int = RATE, stems=STEMS):
    torch.manual_seed(seed)
    cfg = preset("tiny")
    spec = BatchSpec(sample_rate=rate, target=1024, context=128, stems=tuple(stems), dtype="float32")
    torch.save(make_checkpoint(build_model(cfg), None, step=seed, model_config=cfg, model_name="tiny",
                               loss="mae", spec=spec, commit="c0ffee"), path)
    return path


@pytest.fixture(scope="session")
def tiny_factory():
    """``tiny_factory(path, seed, rate=8000) -> path``: save a randomly initialised tiny checkpoint."""
    return save_tiny


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Two differently initialised tiny models: runs/a/last.pt and runs/b/last.pt."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for seed, name in ((1, "a"), (2, "b")):
        (root / name).mkdir()
        paths.append(save_tiny(root / name / "last.pt", seed))
    return paths


@pytest.fixture(scope="session")
def busy_corpus(tmp_path_factory, busy_midi):
    """(root, split with the most eligible songs) of 6 busy 5 s songs."""
    root = tmp_path_factory.mktemp("corpus")
    for shift in range(6):
        busy_midi(5.0, shift).write(str(root / f"song{shift}.mid"))
    eligible = build_index(CorpusConfig(root=root)).eligible()
    counts = {s: sum(x.split == s for x in eligible) for s in SPLITS}
    return root, max(counts, key=counts.get)
