"""How long a note of a SoundFont preset can sound, read from the .sf2/.sf3 file.

The renderer uses this to start an excerpt early enough that every note still sounding at its
start is played from its real onset. The bounds follow FluidSynth's voice model: a voice ends
when its sample ends (one-shot samples), when its volume envelope has decayed to silence (a
silent sustain level), or when its release stage ends after the key and the pedals let go.
Generator values a soundfont modulator can move count at their most lengthening extreme.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# SF2 generator numbers (SoundFont 2.04, 8.1.3)
START, END, START_COARSE, END_COARSE = 0, 1, 4, 12
MOD_LFO_PITCH, VIB_LFO_PITCH, MOD_ENV_PITCH = 5, 6, 7
DELAY, ATTACK, HOLD, DECAY, SUSTAIN, RELEASE, KEY_TO_HOLD, KEY_TO_DECAY = 33, 34, 35, 36, 37, 38, 39, 40
INSTRUMENT, KEY_RANGE, _VEL_RANGE, COARSE_TUNE, FINE_TUNE, SAMPLE, SAMPLE_MODES, SCALE_TUNING, ROOT_KEY = 41, 43, 44, 51, 52, 53, 54, 56, 58
_DEFAULTS = {DELAY: -12000, ATTACK: -12000, HOLD: -12000, DECAY: -12000, RELEASE: -12000,
             SCALE_TUNING: 100, ROOT_KEY: -1, KEY_RANGE: 127 << 8}
# FluidSynth's limits on envelope times (timecents), fluid_conv.c
_TC_MAX = {DELAY: 5000, ATTACK: 8000, HOLD: 5000, DECAY: 8000, RELEASE: 8000}
_SILENT_SUSTAIN = 1000          # centibels; FluidSynth's sustain level is 1 - 0.001 * value
_COMPRESSED = 0x10              # sf3 sample type bit: Ogg data, the header holds no frame count
_CHUNKS = ("phdr", "pbag", "pmod", "pgen", "inst", "ibag", "imod", "igen", "shdr")


class SoundfontFileError(ValueError):
    """A file that is not a readable SoundFont."""


@dataclass(frozen=True)
class PresetTail:
    """Per MIDI key (arrays of 128 seconds): a note of this preset sounds until at most
    ``min(on + hold_limit[key], off + release[key])``, ``off`` being when its key and the pedals
    let go. ``hold_limit`` is inf for a looped sample that sustains; 0 for keys with no zone."""

    hold_limit: np.ndarray
    release: np.ndarray


def _seconds(tc, gen: int):
    """Timecents -> seconds as FluidSynth clamps them (scalars or arrays)."""
    tc = np.asarray(tc, np.float64)
    return np.where(tc <= -32768, 0.0, 2.0 ** (np.clip(tc, -12000, _TC_MAX[gen]) / 1200))


def _riff(f, pos: int, end: int):
    """(id, body offset, size) of the RIFF chunks in [pos, end) of an open file. Tolerates a
    missing pad byte after an odd-sized chunk (MuseScore's sf3 files lack it)."""
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(9)
        if len(head) < 8:
            return
        cid, size = head[:4], struct.unpack_from("<I", head, 4)[0]
        yield cid, pos + 8, size
        f.seek(pos + 8 + size)
        pad = size & 1 and f.read(1) == b"\0"
        pos += 8 + size + pad


def _pdta(path: Path) -> tuple[dict[str, bytes], int]:
    """The preset data sub-chunks of a soundfont, and the file offset of its sample data."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise SoundfontFileError(f"{path}: not a SoundFont (no RIFF sfbk header)")
        end = f.seek(0, 2)
        out, smpl = {}, -1
        for cid, pos, size in _riff(f, 12, end):
            f.seek(pos)
            kind = f.read(4)
            if cid != b"LIST" or kind not in (b"pdta", b"sdta"):
                continue
            for sub, p, s in _riff(f, pos + 4, min(end, pos + size)):
                if kind == b"sdta" and sub == b"smpl":
                    smpl = p
                elif kind == b"pdta":
                    f.seek(p)
                    out[sub.decode("latin-1")] = f.read(s)
    if not all(k in out for k in _CHUNKS):
        raise SoundfontFileError(f"{path}: no complete preset data (pdta) chunk")
    return out, smpl


def _ogg_frames(path: Path, begin: int, end: int) -> float:
    """Frames of an sf3 sample's Ogg Vorbis stream at file bytes [begin, end): the granule
    position of its last page; inf when it cannot be read."""
    with open(path, "rb") as f:
        f.seek(max(begin, end - 65536))
        tail = f.read(end - max(begin, end - 65536))
    at = tail.rfind(b"OggS")
    if at < 0 or at + 14 > len(tail):
        return float("inf")
    granule = struct.unpack_from("<q", tail, at + 6)[0]
    return float(granule) if granule > 0 else float("inf")


def _records(blob: bytes, fmt: str) -> list[tuple]:
    size = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, blob, i) for i in range(0, len(blob) - size + 1, size)]


class _Zones:
    """The zones of the presets (or instruments) of a file: ``zones(i)`` -> list of
    (generators, modulation bound per generator), the global zone merged into the others."""

    def __init__(self, headers: list[tuple], bag_index: int, bags, gens, mods, terminal: int):
        self.headers, self.bag_index, self.terminal = headers, bag_index, terminal
        self.bags, self.gens, self.mods = bags, gens, mods

    def zones(self, i: int) -> list[tuple[dict, dict]]:
        if i + 1 >= len(self.headers):
            return []
        first, last = self.headers[i][self.bag_index], self.headers[i + 1][self.bag_index]
        out = []
        for z in range(first, min(last, len(self.bags) - 1)):
            (g0, m0), (g1, m1) = self.bags[z], self.bags[z + 1]
            spread: dict[int, int] = {}
            for mod in self.mods[m0:m1]:   # a modulator moves its destination by at most |amount|
                spread[mod[1]] = spread.get(mod[1], 0) + abs(mod[2])
            out.append(({g: v for g, v in self.gens[g0:g1]}, spread))
        if out and self.terminal not in out[0][0]:          # a global zone: defaults for the rest
            (ggens, gspread), out = out[0], out[1:]
            out = [({**ggens, **g}, {k: gspread.get(k, 0) + s.get(k, 0) for k in {*gspread, *s}})
                   for g, s in out]
        return [z for z in out if self.terminal in z[0]]


def _key_range(value: int) -> tuple[int, int]:
    return value & 0xFF, (value >> 8) & 0xFF


def _zone_bounds(gens: dict, spread: dict, keys: np.ndarray, sample_info: tuple[float, dict]) -> tuple[np.ndarray, np.ndarray]:
    """(hold limit, release) in seconds at ``keys`` for one instrument zone, ``gens`` holding the
    instrument values plus the preset-level offsets."""
    hi = lambda g: gens.get(g, _DEFAULTS.get(g, 0)) + spread.get(g, 0)   # noqa: E731 (most lengthening)
    lo = lambda g: gens.get(g, _DEFAULTS.get(g, 0)) - spread.get(g, 0)   # noqa: E731
    release = float(_seconds(hi(RELEASE), RELEASE))
    # volume envelope decayed to silence: delay + attack + hold + decay (keynum-scaled)
    if lo(SUSTAIN) >= _SILENT_SUSTAIN:
        k = 60 - keys
        hold_tc = np.maximum(hi(HOLD) + hi(KEY_TO_HOLD) * k, hi(HOLD) + lo(KEY_TO_HOLD) * k)
        decay_tc = np.maximum(hi(DECAY) + hi(KEY_TO_DECAY) * k, hi(DECAY) + lo(KEY_TO_DECAY) * k)
        envelope = (_seconds(hi(DELAY), DELAY) + _seconds(hi(ATTACK), ATTACK)
                    + _seconds(hold_tc, HOLD) + _seconds(decay_tc, DECAY))
    else:
        envelope = np.full(len(keys), np.inf)
    sample = np.full(len(keys), np.inf)
    frames, header = sample_info
    if not gens.get(SAMPLE_MODES, 0) & 1 and header:
        # gens' start/end offsets count frames of the (decoded) sample
        frames += hi(END) + 32768 * hi(END_COARSE) - lo(START) - 32768 * lo(START_COARSE)
        root = gens.get(ROOT_KEY, -1)
        root = root if 0 <= root <= 127 else (header["pitch"] if header["pitch"] <= 127 else 60)
        scale = lo(SCALE_TUNING) if np.all(keys >= root) else hi(SCALE_TUNING)
        # the slowest playback: lowest tuning and every pitch modulation pulling down, plus
        # FluidSynth's default modulators (mod wheel and channel pressure: 50 cents of vibrato each)
        down = abs(gens.get(MOD_LFO_PITCH, 0)) + abs(gens.get(VIB_LFO_PITCH, 0)) + max(0, -lo(MOD_ENV_PITCH)) + 100
        cents = (keys - root) * scale + 100 * lo(COARSE_TUNE) + lo(FINE_TUNE) + header["correction"] - down
        sample = max(frames, 0.0) / max(header["rate"], 1) / 2.0 ** (cents / 1200)
    return np.minimum(envelope, sample), np.full(len(keys), release)


class PresetTails:
    """The presets of one .sf2/.sf3 file; ``tail(bank, program)`` computes (once) a preset's
    ``PresetTail``, or None when the file has no such preset. Raises ``SoundfontFileError`` for a
    file that is not a SoundFont."""

    def __init__(self, path: Path):
        self._path = Path(path)
        p, self._smpl = _pdta(self._path)
        phdr, inst = _records(p["phdr"], "<20sHHH12x"), _records(p["inst"], "<20sH")
        self._shdr = _records(p["shdr"], "<20sIIIIIBbHH")
        self._presets = _Zones(phdr, 3, _records(p["pbag"], "<HH"), _records(p["pgen"], "<Hh"),
                               _records(p["pmod"], "<HHhHH"), INSTRUMENT)
        self._instruments = _Zones(inst, 1, _records(p["ibag"], "<HH"), _records(p["igen"], "<Hh"),
                                   _records(p["imod"], "<HHhHH"), SAMPLE)
        self._index = {(h[2], h[1]): j for j, h in enumerate(phdr[:-1])}
        self._cache: dict[tuple[int, int], PresetTail] = {}

    def presets(self) -> list[tuple[int, int]]:
        return sorted(self._index)

    def tail(self, bank: int, program: int) -> PresetTail | None:
        key = (bank, program)
        if key not in self._cache and key in self._index:
            self._cache[key] = self._compute(self._index[key])
        return self._cache.get(key)

    def _compute(self, j: int) -> PresetTail:
        keys_all = np.arange(128)
        hold, release = np.zeros(128), np.zeros(128)
        for pgens, pspread in self._presets.zones(j):
            plo, phi = _key_range(pgens.get(KEY_RANGE, 127 << 8))
            offsets = {g: v for g, v in pgens.items() if g not in (INSTRUMENT, KEY_RANGE, _VEL_RANGE)}
            for igens, ispread in self._instruments.zones(pgens[INSTRUMENT] & 0xFFFF):
                ilo, ihi = _key_range(igens.get(KEY_RANGE, 127 << 8))
                keys = keys_all[max(plo, ilo):min(phi, ihi) + 1]
                if not len(keys):
                    continue
                gens = {**igens, **{g: igens.get(g, _DEFAULTS.get(g, 0)) + v for g, v in offsets.items()}}
                spread = {g: ispread.get(g, 0) + pspread.get(g, 0) for g in {*ispread, *pspread}}
                h, r = _zone_bounds(gens, spread, keys, self._sample_frames(gens[SAMPLE] & 0xFFFF))
                hold[keys], release[keys] = np.maximum(hold[keys], h), np.maximum(release[keys], r)
        hold.flags.writeable = release.flags.writeable = False
        return PresetTail(hold, release)

    def _sample_frames(self, index: int) -> tuple[float, dict]:
        """(frames, header fields) of sample ``index``; frames inf when unknown."""
        if index >= len(self._shdr):
            return 0.0, {}
        _, start, end, _, _, rate, pitch, correction, _, kind = self._shdr[index]
        frames = float(end - start)
        if kind & _COMPRESSED:    # sf3: start/end are byte offsets of the Ogg data
            frames = _ogg_frames(self._path, self._smpl + start, self._smpl + end) if self._smpl >= 0 else float("inf")
        return frames, {"rate": rate, "pitch": pitch, "correction": correction}
