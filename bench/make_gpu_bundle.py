"""Build the offline GPU benchmark bundle: one folder that runs `bench/gpu.sh` on an air-gapped box.

The bundle holds the project (its tracked files under synth_server/, trainer/, bench/, docs/),
``bundle/wheels/``: wheels for every runtime dependency except what the box brings (torch,
numpy), for one Python version and manylinux platform; ``bundle/lib/``: libfluidsynth and the
shared libraries it loads, minus glibc and the C++ runtime every PyTorch box has, with their
LOAD_ORDER;
``bundle/soundfonts/``: a small GM soundfont (TimGM6mb, taken from the pretty_midi wheel); and
``bundle/manifest.json`` (what is in it, from where, and the glibc the libraries need).

Two sources, one layout:
* ``download`` (default; `make gpu-bundle`): ``pip download`` for the target Python/platform,
  ``apt-get download`` + ``dpkg -x`` for the libraries. Needs the package registries and
  libfluidsynth3 installed here (its ``ldd`` says which libraries to take).
* ``installed``: wheels re-packed from this Python's installed distributions and the libraries
  copied from this system. Offline; the target must then be this machine's Python (the tests).

    python bench/make_gpu_bundle.py --out dist/gpu-bundle [--python-version 3.12]
        [--glibc 2.28] [--source download|installed] [--corpus DIR] [--max-mib 60]
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PATHS = ("synth_server", "trainer", "bench", "docs", "pyproject.toml", "README.md")
TARGET_PROVIDES = {"torch", "numpy"}        # the GPU box's own; never bundled
# not needed by gpu.sh (it draws no pictures: eval imports matplotlib only for --plot/--report),
# and with its dependencies it would take the bundle past 60 MiB
NOT_BUNDLED = {"matplotlib"}
# Loaded from the box itself: glibc must match its own loader; the C++ runtime is PyTorch's.
BASE_LIBS = re.compile(r"^(ld-linux.*|linux-vdso.*|lib(c|m|dl|rt|pthread|resolv|util|stdc\+\+|gcc_s)\.so.*)$")
FLUIDSYNTH = "libfluidsynth.so.3"


@dataclass(frozen=True)
class Target:
    """The box's Python: ``python_version`` "3.12", manylinux up to glibc ``glibc`` "2.28"."""

    python_version: str = "3.12"
    glibc: str = "2.28"
    machine: str = "x86_64"

    def platforms(self) -> list[str]:
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{n}_{self.machine}" for n in range(minor, 16, -1)]
        return tags + [f"manylinux2014_{self.machine}", f"manylinux1_{self.machine}"]

    def marker_env(self) -> dict[str, str]:
        env = default_environment()
        env.update(python_version=self.python_version, python_full_version=f"{self.python_version}.0",
                   sys_platform="linux", platform_system="Linux", platform_machine=self.machine,
                   implementation_name="cpython", platform_python_implementation="CPython", os_name="posix",
                   extra="")
        return env


def project_requirements() -> list[Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d) for d in deps]


def dependency_closure(roots: list[Requirement], requires, env: dict) -> list[str]:
    """Canonical names of ``roots`` and everything they need under ``env``, minus TARGET_PROVIDES and NOT_BUNDLED.

    ``requires(name)`` -> the Requires-Dist strings of distribution ``name``.
    """
    seen: list[str] = []
    todo = [r for r in roots]
    while todo:
        req = todo.pop(0)
        name = canonicalize_name(req.name)
        if name in TARGET_PROVIDES or name in NOT_BUNDLED or name in seen or (req.marker and not req.marker.evaluate(env)):
            continue
        seen.append(name)
        for text in requires(name) or []:
            dep = Requirement(text)
            if not dep.marker or dep.marker.evaluate(env):
                todo.append(dep)
    return seen


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --- wheels -----------------------------------------------------------------------------------

def _wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def download_wheels(target: Target, dest: Path) -> list[Path]:
    """``pip download`` the closure for ``target``, pinned to the versions installed here when
    there are any (the tested combination)."""
    env = target.marker_env()
    found: dict[str, Path] = {}

    def requires(name: str) -> list[str]:
        version = _installed_version(name)
        spec = f"{name}=={version}" if version else name
        before = set(dest.glob("*.whl"))
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", target.python_version, "--implementation", "cp", "-d", str(dest)]
        for tag in target.platforms():
            cmd += ["--platform", tag]
        subprocess.run(cmd + [spec], check=True)
        new = (set(dest.glob("*.whl")) - before) or {p for p in dest.glob("*.whl") if _dist_of(p) == name}
        found[name] = sorted(new)[0]
        return _wheel_requires(found[name])

    dependency_closure(project_requirements(), requires, env)
    return sorted(found.values())


def _dist_of(wheel: Path) -> str:
    return canonicalize_name(wheel.name.split("-")[0])


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def repack_installed(name: str, dest: Path) -> Path:
    """A wheel of installed distribution ``name`` (its RECORD's files under site-packages and its
    original WHEEL tags), so the installed tree is reproduced by ``pip install``."""
    dist = metadata.distribution(name)
    info_dir = next(f for f in dist.files if f.parent.name.endswith(".dist-info")).parent
    wheel_meta = (dist.read_text("WHEEL") or "")
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise RuntimeError(f"{name}: installed without a WHEEL file; cannot re-pack it")
    py, abi, plat = (".".join(sorted({t.split("-")[i] for t in tags})) for i in range(3))
    stem = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}"
    path = dest / f"{stem}-{py}-{abi}-{plat}.whl"
    rows = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in dist.files:
            parts = rel.parts
            if parts[0] == ".." or "__pycache__" in parts or rel.name in ("RECORD", "INSTALLER", "direct_url.json"):
                continue
            data = Path(dist.locate_file(rel)).read_bytes()
            zf.writestr(rel.as_posix(), data)
            rows.append(_record_line(rel.as_posix(), data))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows + [[f"{info_dir.as_posix()}/RECORD", "", ""]])
        zf.writestr(f"{info_dir.as_posix()}/RECORD", buf.getvalue())
    return path


def installed_wheels(dest: Path) -> list[Path]:
    env = Target(python_version=f"{sys.version_info[0]}.{sys.version_info[1]}").marker_env()
    names = dependency_closure(project_requirements(), lambda n: metadata.requires(n) or [], env)
    return [repack_installed(n, dest) for n in names]


# --- shared libraries --------------------------------------------------------------------------

def _system_fluidsynth() -> Path:
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    m = re.search(rf"{re.escape(FLUIDSYNTH)} .*=> (\S+)", out)
    if not m:
        raise SystemExit(f"{FLUIDSYNTH} is not installed here: apt-get install libfluidsynth3 (make system-deps)")
    return Path(m.group(1))


def ldd(path: Path, library_path: Path | None = None) -> dict[str, str | None]:
    """soname -> resolved path (None: not found) of everything ``path`` loads."""
    env = {"LD_LIBRARY_PATH": str(library_path)} if library_path else {}
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env, check=True).stdout
    libs: dict[str, str | None] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m:
            libs[m.group(1)] = None if m.group(2) == "not" else m.group(2)
    return libs


def needed_libs() -> dict[str, Path]:
    """soname -> system path of libfluidsynth and every library it loads that a box may lack."""
    lib = _system_fluidsynth()
    libs = {FLUIDSYNTH: lib}
    for soname, path in ldd(lib).items():
        if path is None:
            raise SystemExit(f"ldd {lib}: {soname} not found")
        if not BASE_LIBS.match(soname):
            libs[soname] = Path(path)
    return libs


def _package_of(path: Path) -> tuple[str, str]:
    """(package, version) that installed ``path`` (merged /usr: tried with and without /usr)."""
    for candidate in (str(path), str(path).removeprefix("/usr"), "/usr" + str(path)):
        done = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if done.returncode == 0:
            package = done.stdout.split(":")[0]
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                                     text=True, check=True).stdout
            return package, version
    raise SystemExit(f"dpkg -S {path}: no package owns it")


def collect_libs(dest: Path, source: str) -> list[dict]:
    """Copy the needed libraries into ``dest`` (from .debs or this system); their manifest rows."""
    libs = needed_libs()
    owners = {soname: _package_of(path.resolve()) for soname, path in libs.items()}
    if source == "download":
        stage = Path(tempfile.mkdtemp(prefix="gpu-bundle-debs-"))
        stage.chmod(0o777)                      # apt downloads as its own user where it can
        packages = sorted({p for p, _ in owners.values()})
        # the archive's current versions (security fixes included; the installed one may be gone)
        subprocess.run(["apt-get", "download", "-qq", *packages], cwd=stage, check=True)
        versions = {}
        for deb in stage.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(stage / "root")], check=True)
            fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True,
                                    text=True, check=True).stdout
            name, version = (line.split(": ", 1)[1] for line in fields.splitlines()[:2])
            versions[name] = version
        staged = {p.name: p for p in (stage / "root").rglob("*.so*")}
        owners = {s: (p, versions[p]) for s, (p, _) in owners.items()}
    rows = []
    for soname, path in sorted(libs.items()):
        origin = staged[soname].resolve() if source == "download" else path.resolve()
        shutil.copyfile(origin, dest / soname)
        package, version = owners[soname]
        rows.append({"soname": soname, "package": package, "version": version, "bytes": (dest / soname).stat().st_size})
    if source == "download":
        shutil.rmtree(stage)
    missing = [s for s, p in ldd(dest / FLUIDSYNTH, dest).items()
               if not BASE_LIBS.match(s) and (p is None or Path(p).parent != dest)]
    if missing:
        raise SystemExit(f"bundle/lib is incomplete: {missing} do not resolve inside it")
    write_load_order(dest)
    return rows


def write_load_order(folder: Path) -> None:
    """``folder/LOAD_ORDER``: the sonames, each after everything it loads (fewer transitive
    dependencies first), so they can be loaded by path one by one without LD_LIBRARY_PATH."""
    inside = {p.name for p in folder.glob("*.so*")}
    depth = {name: sum(dep in inside for dep in ldd(folder / name, folder)) for name in inside}
    (folder / "LOAD_ORDER").write_text("\n".join(sorted(inside, key=lambda n: (depth[n], n))) + "\n")


def glibc_needed(folder: Path) -> str:
    """Highest GLIBC_x.y symbol version any library in ``folder`` asks for."""
    best = (2, 17)
    for lib in folder.glob("*.so*"):
        for m in re.finditer(rb"GLIBC_(\d+)\.(\d+)", lib.read_bytes()):
            best = max(best, (int(m.group(1)), int(m.group(2))))
    return f"{best[0]}.{best[1]}"


# --- the bundle --------------------------------------------------------------------------------

def copy_project(out: Path) -> str:
    """The project's files into ``out``: the tracked and untracked-but-not-ignored ones of a git
    checkout (working-tree content), else the folders as they are. Returns the commit."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                             *PROJECT_PATHS], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        for rel in PROJECT_PATHS:
            copy = shutil.copytree if (ROOT / rel).is_dir() else shutil.copy2
            copy(ROOT / rel, out / rel, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (ROOT / rel).is_dir() else {}))
        return "unknown (not a git checkout)"
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, out / rel)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *PROJECT_PATHS], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def extract_soundfont(wheels: list[Path], dest: Path) -> Path:
    """TimGM6mb.sf2 from the pretty_midi wheel (the soundfont it ships)."""
    wheel = next(w for w in wheels if _dist_of(w) == "pretty-midi")
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith("TimGM6mb.sf2"))
        path = dest / "TimGM6mb.sf2"
        path.write_bytes(zf.read(member))
    return path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_bundle(out: Path, target: Target, source: str, corpus: Path | None = None,
                 max_mib: float = 60.0) -> dict:
    """Write the bundle into ``out`` (replaced if it exists); returns the manifest."""
    if out.exists():
        shutil.rmtree(out)
    bundle = out / "bundle"
    for sub in ("wheels", "lib", "soundfonts"):
        (bundle / sub).mkdir(parents=True)
    commit = copy_project(out)
    if source == "download":
        wheels = download_wheels(target, bundle / "wheels")
    else:
        wheels = installed_wheels(bundle / "wheels")
    libs = collect_libs(bundle / "lib", source)
    soundfont = extract_soundfont(wheels, bundle / "soundfonts")
    if corpus is not None:
        shutil.copytree(corpus, bundle / "corpus", ignore=shutil.ignore_patterns(".stemstream-index.json"))
    manifest = {
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "source": source,
        "target": {"python_version": target.python_version, "platforms": target.platforms()}
        if source == "download" else {"python_version": platform.python_version(), "platforms": ["this machine"]},
        "wheels": [{"file": w.name, "dist": _dist_of(w)} for w in wheels],
        "requirements": {canonicalize_name(r.name): str(r.specifier) for r in project_requirements()},
        "libs": libs, "fluidsynth": f"bundle/lib/{FLUIDSYNTH}", "glibc_min": glibc_needed(bundle / "lib"),
        "soundfont": str(soundfont.relative_to(out)),
        "corpus": "bundle/corpus" if corpus is not None else None,
    }
    manifest["mib"] = round(folder_bytes(out) / 2**20, 1)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if manifest["mib"] > max_mib:
        raise SystemExit(f"bundle is {manifest['mib']} MiB, over the {max_mib} MiB limit")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "dist" / "gpu-bundle")
    ap.add_argument("--python-version", default="3.12", help="the box's CPython (download source)")
    ap.add_argument("--glibc", default="2.28", help="newest manylinux glibc the box accepts (download source)")
    ap.add_argument("--source", choices=("download", "installed"), default="download")
    ap.add_argument("--corpus", type=Path, help="MIDI folder to ship (default: the demo corpus, written there)")
    ap.add_argument("--max-mib", type=float, default=60.0)
    args = ap.parse_args()
    manifest = build_bundle(args.out, Target(args.python_version, args.glibc), args.source, args.corpus,
                            args.max_mib)
    print(f"wrote {args.out}: {manifest['mib']} MiB, {len(manifest['wheels'])} wheels, "
          f"{len(manifest['libs'])} libraries (need glibc >= {manifest['glibc_min']}), commit {manifest['commit']}")
    print(f"run it: bash {args.out}/bench/gpu.sh --out RESULTS_DIR    (--dry-run on a CPU machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
