"""Loaded at start-up by every Python process of `bench/gpu.sh` (this folder is on PYTHONPATH).

pyfluidsynth finds libfluidsynth with ``ctypes.util.find_library``, which on Linux reads only
the ldconfig cache (or asks gcc / ld): a library unpacked into a folder is invisible to it.
``STEMSTREAM_FLUIDSYNTH_LIB`` names the bundle's copy. Its dependencies (listed in LOAD_ORDER
beside it, each after what it needs) are loaded by path first, so the loader finds them by
soname; no LD_LIBRARY_PATH, which would hand the bundle's libraries to every program the
benchmark starts (compilers included). A sitecustomize of the box's own, which this one shadows,
runs afterwards.
"""
import ctypes
import ctypes.util
import importlib.machinery
import importlib.util
import os
import sys

_LIB = os.environ.get("STEMSTREAM_FLUIDSYNTH_LIB")
if _LIB:
    _find_library = ctypes.util.find_library
    _loaded = []

    def _preload():
        folder = os.path.dirname(_LIB)
        with open(os.path.join(folder, "LOAD_ORDER")) as f:
            for name in f.read().split():
                _loaded.append(ctypes.CDLL(os.path.join(folder, name), mode=ctypes.RTLD_GLOBAL))

    def find_library(name):
        if name.removeprefix("lib").split("-")[0] == "fluidsynth":
            if not _loaded:
                _preload()
            return _LIB
        return _find_library(name)

    ctypes.util.find_library = find_library

_HERE = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
