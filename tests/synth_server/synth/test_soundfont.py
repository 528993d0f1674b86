import pytest

from synth_server.synth import soundfont
from synth_server.synth.soundfont import SoundfontError, resolve_soundfonts


def test_explicit_file_and_folder(tmp_path):
    a, b = tmp_path / "b.sf2", tmp_path / "a.SF2"
    a.write_bytes(b"x"), b.write_bytes(b"x")
    assert resolve_soundfonts(a) == [a]
    assert resolve_soundfonts(tmp_path) == [b, a]


def test_explicit_missing_or_empty(tmp_path):
    with pytest.raises(SoundfontError, match="no such file"):
        resolve_soundfonts(tmp_path / "nope.sf2")
    with pytest.raises(SoundfontError, match="no .sf2"):
        resolve_soundfonts(tmp_path)


def test_order_project_then_system_then_bundled(tmp_path, monkeypatch):
    project = tmp_path / "soundfonts"
    project.mkdir()
    system = tmp_path / "FluidR3_GM.sf2"
    bundled = tmp_path / "TimGM6mb.sf2"
    monkeypatch.setattr(soundfont, "SYSTEM_SOUNDFONT", system)
    monkeypatch.setattr(soundfont, "_pretty_midi_soundfont", lambda: bundled)
    with pytest.raises(SoundfontError) as err:
        resolve_soundfonts(None, project)
    for name in ("--soundfont", str(project), str(system), str(bundled)):
        assert name in str(err.value)
    bundled.write_bytes(b"x")
    assert resolve_soundfonts(None, project) == [bundled]
    system.write_bytes(b"x")
    assert resolve_soundfonts(None, project) == [system]
    (project / "mine.sf2").write_bytes(b"x")
    assert resolve_soundfonts(None, project) == [project / "mine.sf2"]
