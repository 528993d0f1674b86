"""`trainer train` end to end against a real `synth-server serve` on loopback (tiny model, CPU):
checkpoints, metrics rows, config.json, resume from 6 to 8, a clean stop on Ctrl-C."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from harness import ROOT, synth_server_cli, wait_for
from trainer.checkpoint import load_checkpoint, load_separator

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path, busy_midi, serve):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        busy_midi(5.0, i).write(str(corpus / f"song{i}.mid"))
    return serve("--corpus", corpus, "--workers", 1, "--pool-size", 64, "--target", 1024, "--context", 256,
                 "--excerpt", 1.0, "--split", "train", "--jobs", 1, "--reuse", 2).address


def train_args(address: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "--connect", address, "--model", "tiny",
            "--steps", str(steps), "--batch-size", "4", "--checkpoint-every", "3", "--log-every", "2",
            "--stats-every", "1", "--run-dir", str(run_dir), "--device", "cpu", "--timeout", "20",
            "--give-up", "60", *extra]


def all_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rows(run_dir: Path) -> list[dict]:
    """Training rows (validation rows, with ``valid_sisdri``, are in the same file)."""
    return [r for r in all_rows(run_dir) if "loss" in r]


def test_train_resume_and_ctrl_c(server, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.run(train_args(server, run_dir, 6, "--remix"), cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "receptive field 67 samples" in first.stdout and "steps 0 -> 6" in first.stdout
    # the last step is validated on the server's fixed valid set, which keeps best.pt
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt", "step-00000003.pt",
                                                            "step-00000006.pt"]
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt.step == 6 and ckpt.loss == "mae" and ckpt.model_config.stems == 4
    assert (ckpt.spec.target, ckpt.spec.context, ckpt.spec.sample_rate) == (1024, 256, 44100)
    assert ckpt.spec.stems == ("drums", "piano", "strings", "bass")
    got = rows(run_dir)
    assert [r["step"] for r in got] == [2, 4, 6]
    for r in got:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "loss_drums", "loss_bass"))
        assert 0 <= r["wait_share"] <= 1 and r["chunks_per_s"] == pytest.approx(4 * r["steps_per_s"])
    assert any(r.get("reuse") == 2 for r in got)                    # R from the server's stats
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "tiny" and config["remix"] is True and config["stream"]["context"] == 256
    assert config["commit"] == (run_dir / "git.txt").read_text().strip() and config["commit"]

    second = subprocess.run(train_args(server, run_dir, 8, "--resume"), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "steps 6 -> 8" in second.stdout
    assert load_checkpoint(run_dir / "last.pt").step == 8
    assert [r["step"] for r in rows(run_dir)] == [2, 4, 6, 8]

    proc = subprocess.Popen(train_args(server, run_dir, 100_000, "--resume"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: max(r["step"] for r in rows(run_dir)) >= 12 or proc.poll() is not None, timeout=90, every=0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    stopped = load_checkpoint(run_dir / "last.pt").step
    assert stopped >= 12 and f"steps 8 -> {stopped}" in out
    model, _ = load_separator(run_dir / "last.pt")
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 1536), 1024).shape == (1, 4, 1024)


def test_two_process_ddp_on_cpu(server, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *train_args(server, run_dir, 4)[1:]]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("steps 0 -> 4") == 1   # rank 0 reports
    assert load_checkpoint(run_dir / "last.pt").step == 4
    got = rows(run_dir)
    assert [r["step"] for r in got] == [2, 4] and got[0]["chunks_per_s"] == pytest.approx(8 * got[0]["steps_per_s"])
    stats = synth_server_cli("stats", "--connect", server, "--json", timeout=30)
    clients = {c["id"]: c["chunks"] for c in json.loads(stats.stdout)["clients"]}
    assert clients.get("rank0", 0) >= 16 and clients.get("rank1", 0) >= 16


def test_eval_and_separate_on_a_trained_checkpoint(server, tmp_path):
    run_dir = tmp_path / "run"
    trained = subprocess.run(train_args(server, run_dir, 4), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert trained.returncode == 0, trained.stderr
    ckpt = str(run_dir / "last.pt")
    report = tmp_path / "eval.json"
    ev = subprocess.run([sys.executable, "-m", "trainer", "eval", "--checkpoint", ckpt, "--corpus",
                         str(tmp_path / "corpus"), "--split", "train", "--unit", "chunk", "--n", "8", "--json", str(report),
                         "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(report.read_text())
    assert "IRM oracle" in ev.stdout and result["chunks"] == 8
    assert set(result["stems"]) == {"drums", "piano", "strings", "bass"}
    overall = result["overall"]
    assert overall["pairs"] + overall["skipped_silent"] == 8 * 4
    assert overall["oracle"]["mean"] > overall["mixture"]["mean"]  # the oracle separates, the mixture does not
    wav = tmp_path / "in.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal((30_000, 2))).astype(np.float32), 22050)
    sep = subprocess.run([sys.executable, "-m", "trainer", "separate", "--checkpoint", ckpt, str(wav),
                          "--out", str(tmp_path / "stems"), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert sep.returncode == 0, sep.stderr
    for stem in ("drums", "piano", "strings", "bass"):
        info = sf.info(tmp_path / "stems" / f"{stem}.wav")
        assert (info.frames, info.samplerate) == (30_000, 22050)


def test_validation_curve_and_best_checkpoint(server, tmp_path):
    run_dir = tmp_path / "valid"
    done = subprocess.run(train_args(server, run_dir, 6, "--valid-every", "2", "--valid-split", "train",
                                     "--valid-n", "2", "--valid-seconds", "0.5", "--loss", "mae+0.1*sisdr"),
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "validation set: 2 excerpts x 0.5 s of split train" in done.stdout
    valid = [r for r in all_rows(run_dir) if "valid_sisdri" in r]
    assert valid and valid[-1]["step"] == 6                         # the final step is always validated
    for r in valid:
        assert all(np.isfinite(r[f"valid_sisdri_{s}"]) for s in ("drums", "piano", "strings", "bass"))
        assert r["valid_best"] == max(v["valid_sisdri"] for v in valid if v["step"] <= r["step"])
    best = load_checkpoint(run_dir / "best.pt")
    assert best.data["valid"]["valid_sisdri"] == valid[-1]["valid_best"]
    assert best.gain.mode == "rms" and load_checkpoint(run_dir / "last.pt").data["best_valid"] == valid[-1]["valid_best"]
    assert all(r["skipped_steps"] == 0 and np.isfinite(r["grad_norm"]) for r in rows(run_dir))
