"""The offline GPU bundle: built here from what is installed (no network), run with --dry-run,
rendered to markdown; plus the pure pieces (dependency closure, R-phase figures, report section)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench")]

import gpu_report  # noqa: E402
import make_gpu_bundle as mgb  # noqa: E402


def _fluidsynth_installed() -> bool:
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    return mgb.FLUIDSYNTH in out and shutil.which("ldd") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    if not _fluidsynth_installed():
        pytest.skip("libfluidsynth3 and ldd are needed to build the bundle (make system-deps)")
    out = tmp_path_factory.mktemp("gpu") / "bundle"
    mgb.build_bundle(out, mgb.Target(), "installed")
    return out


def test_bundle_holds_the_project_wheels_libraries_and_a_soundfont(bundle):
    manifest = json.loads((bundle / "bundle" / "manifest.json").read_text())
    dists = {w["dist"] for w in manifest["wheels"]}
    assert {"pyzmq", "pretty-midi", "mido", "pyfluidsynth", "soundfile", "cffi", "prometheus-client"} <= dists
    assert not dists & {"torch", "numpy"}                       # the box's own
    assert all((bundle / "bundle" / "wheels" / w["file"]).is_file() for w in manifest["wheels"])
    libs = {row["soname"] for row in manifest["libs"]}
    assert "libfluidsynth.so.3" in libs and "libsndfile.so.1" in libs
    assert not any(mgb.BASE_LIBS.match(s) for s in libs)       # glibc and libstdc++ come from the box
    lib = bundle / "bundle" / "lib"
    resolved = mgb.ldd(lib / "libfluidsynth.so.3", lib)
    assert all(path is not None for path in resolved.values())
    order = (lib / "LOAD_ORDER").read_text().split()
    assert sorted(order) == sorted(libs) and order[-1] == "libfluidsynth.so.3"
    for i, name in enumerate(order):            # each library after everything it loads
        needs = {dep for dep, path in mgb.ldd(lib / name, lib).items() if path and Path(path).parent == lib}
        assert needs <= set(order[:i]), name
    assert (bundle / manifest["soundfont"]).stat().st_size > 5_000_000     # TimGM6mb
    for rel in ("bench/gpu.sh", "bench/gpu_bench.py", "trainer/cli.py", "synth_server/cli/main.py"):
        assert (bundle / rel).is_file()
    assert not (bundle / "tests").exists()
    assert manifest["mib"] <= 60 and manifest["glibc_min"].startswith("2.")


@pytest.mark.slow
def test_dry_run_from_the_bundle_measures_every_part(bundle, tmp_path):
    """gpu.sh with only the bundle's wheels (--all), a fresh TMPDIR, no PYTHONPATH of the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CI")}
    env.update(PYTHON=sys.executable, STEMSTREAM_BUNDLE_ALL_WHEELS="1", TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "results"
    done = subprocess.run(["bash", str(bundle / "bench" / "gpu.sh"), "--dry-run", "--out", str(out),
                           "--time-limit", "300"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu-bench.json").read_text())
    parts = result["parts"]
    assert {k: p["status"] for k, p in parts.items()} == {"steps": "ok", "stream": "ok", "train_eval": "ok"}, parts

    env_seen = result["environment"]
    manifest = json.loads((bundle / "bundle" / "manifest.json").read_text())
    assert len(env_seen["wheels_installed"]) == len(manifest["wheels"])
    assert env_seen["fluidsynth_lib"] == str(bundle / "bundle" / "lib" / "libfluidsynth.so.3")
    # the bundle's copies serve libfluidsynth (system copies only of what Python itself had loaded)
    system = " ".join(env_seen["fluidsynth_system_copies"])
    assert not any(name in system for name in ("libsndfile", "libglib", "libSDL2", "libinstpatch", "libjack",
                                                "libpulse", "libfluidsynth")), system

    rows, skipped = parts["steps"]["rows"], parts["steps"]["skipped"]     # a loaded machine skips some
    assert sorted((r["batch"], r["compiled"]) for r in rows + skipped) == [
        (b, c) for b in (12, 32, 64) for c in (False, True)]
    assert all(s["reason"].startswith("time:") for s in skipped)
    by_batch = {r["batch"]: r for r in rows if not r["compiled"]}
    assert 12 in by_batch and all(r["step_ms"] > 0 and r["flops_per_step"] > 0 for r in rows)
    for batch, row in by_batch.items():         # FLOPs grow linearly with the batch
        assert row["flops_per_step"] == pytest.approx(batch / 12 * by_batch[12]["flops_per_step"], rel=0.01)

    stream = parts["stream"]
    assert stream["kept_chunks_per_s"] > 0 and [p["reuse"] for p in stream["phases"]] == ["1", "2", "4", "auto"]
    measured = [p for p in stream["phases"] if "steps_per_s" in p]
    assert measured and all(0 <= p["wait_share"] <= 1 for p in measured)
    assert all(p["reuse_seen"] in ([], [int(p["reuse"])]) for p in measured if p["reuse"] != "auto")

    te = parts["train_eval"]
    assert te["trainer_exit"] == 130 and te["train"]["steps"] > 0      # stopped by SIGTERM, saved
    assert te["train"]["loss_end"] < te["train"]["loss_start"]
    overall = te["eval"]["overall"]
    assert overall["pairs"] > 0 and overall["oracle"]["mean"] > overall["mixture"]["mean"]
    assert set(te["amp_check"]["trained"]["stems"]) == {"drums", "piano", "strings", "bass"}
    assert te["amp_check"]["init"]["overall"] > 20                # bf16 is close to fp32, not equal
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["gpu-bench.json", "gpu-bench.log", "serve.log", "train.log", "train-metrics.jsonl", "eval.json"])
    assert list((tmp_path / "tmp").iterdir()) == []                # the temp folder is gone
    assert not list(bundle.rglob("__pycache__")) and not list(bundle.rglob(".stemstream-index.json"))

    markdown = gpu_report.render(result)
    assert "DRY RUN" in markdown and f"{stream['kept_chunks_per_s']:.0f} kept chunks/s" in markdown
    assert markdown.count("\n| ") >= 6 + 4 + 5 + 2


def test_dependency_closure_follows_markers_and_leaves_the_box_its_own():
    graph = {"a": ["b>=1", "torch", "c; python_version < '3.0'", "d; extra == 'plot'"], "b": ["numpy", "e"],
             "e": []}
    env = mgb.Target("3.12").marker_env()
    assert mgb.dependency_closure([Requirement("a")], graph.get, env) == ["a", "b", "e"]


def test_target_platforms_cover_older_manylinux():
    tags = mgb.Target("3.12", "2.28").platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags


def test_write_section_replaces_only_between_the_markers(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# B\nbefore\n{gpu_report.BEGIN}\npending\n{gpu_report.END}\nafter\n")
    gpu_report.write_section(doc, "| new | table |\n")
    assert doc.read_text() == f"# B\nbefore\n{gpu_report.BEGIN}\n| new | table |\n{gpu_report.END}\nafter\n"
