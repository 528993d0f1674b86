"""Install the bundle's wheels that this Python lacks into one folder (stdlib only; gpu.sh runs it).

A wheel is skipped when its distribution is installed here in a version the project accepts
(pyproject's requirement; any version for indirect dependencies), unless ``--all``. Installs
with ``pip install --no-index --no-deps --target`` (nothing is fetched, nothing outside the
folder changes); without pip the wheels are unpacked, which is what pip does for them.
Prints one JSON object: ``installed``, ``present`` (dist -> version found), ``python``.

    python bench/gpu_install.py BUNDLE_DIR SITE_DIR [--all]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path


def satisfied(dist: str, specifier: str) -> str | None:
    """The installed version of ``dist`` when it meets ``specifier`` (None otherwise)."""
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    if not specifier:
        return version
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:             # cannot check: take the bundled wheel
        return None
    return version if version in SpecifierSet(specifier) else None


def install(wheels: list[Path], site: Path) -> None:
    site.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("pip") is None:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site), *map(str, wheels)], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("site", type=Path)
    ap.add_argument("--all", action="store_true", help="install every bundled wheel (tests)")
    args = ap.parse_args()
    manifest = json.loads((args.bundle / "bundle" / "manifest.json").read_text())
    built_for, here = manifest["target"]["python_version"], platform.python_version()
    if not here.startswith(built_for):
        print(f"error: this bundle's wheels are for Python {built_for}, this is {here}; rebuild it with "
              f"`make gpu-bundle GPU_PYTHON={here.rsplit('.', 1)[0]}`", file=sys.stderr)
        return 2
    wanted, present = [], {}
    for wheel in manifest["wheels"]:
        found = None if args.all else satisfied(wheel["dist"], manifest["requirements"].get(wheel["dist"], ""))
        if found is None:
            wanted.append(args.bundle / "bundle" / "wheels" / wheel["file"])
        else:
            present[wheel["dist"]] = found
    if wanted:
        install(wanted, args.site)
    print(json.dumps({"installed": [w.name for w in wanted], "present": present,
                      "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
