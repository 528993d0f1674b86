"""Stats views of a broker snapshot: rate meter, text, Prometheus text, the /metrics endpoint."""
import re
import urllib.error
import urllib.request

import pytest

from synth_server.serve.broker import Broker
from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig
from synth_server.synth.corpus import SongInfo
from synth_server.serve.config import BrokerConfig
from synth_server.serve.metrics import MetricsServer, prometheus_text
from synth_server.serve.rates import RateMeter
from synth_server.serve.stats import format_stats

SAMPLE = re.compile(r'^stemstream_[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+-]+$')


@pytest.fixture
def snapshot(tmp_path):
    song = SongInfo(path="a.mid", size=1, mtime=0.0, song_id="0" * 16, duration=3.0, class_notes={},
                    instruments=(), split="train")
    source = ChunkSourceConfig(corpus=CorpusConfig(root=tmp_path), audio=AudioConfig(target=64, context=16))
    broker = Broker(BrokerConfig(port=0, pool_size=10, reuse=2), source, [song], tmp_path)
    try:
        broker.totals.update({"rendered": 30, "kept": 12, "received": 10, "rejected_silence": 18,
                              "song_failed_parse": 1, "excerpts": 5, "preroll_capped": 1})
        broker.errors.update({"protocol": 2, "unknown_peer": 1})
        yield broker.snapshot()
    finally:
        broker.close()


def test_rate_meter_measures_over_its_window():
    meter = RateMeter(window_s=10)
    assert meter.rate() == 0.0
    for t in range(0, 31):
        meter.update(float(t), 5.0 * t)
    assert meter.rate() == pytest.approx(5.0)
    meter.update(31.0, 155.0 + 100)
    assert meter.rate() == pytest.approx((255 - 5 * 21) / 10)


def test_snapshot_groups_counters(snapshot):
    assert snapshot["rejections"] == {"silence": 18}
    assert snapshot["song_errors"] == {"parse": 1, "too_short": 0}
    assert snapshot["excerpts"] == {"rendered": 5, "preroll_capped": 1}
    assert snapshot["malformed"] == 2 and snapshot["errors"] == {"protocol": 2, "unknown_peer": 1}
    assert snapshot["pool"]["budget_bytes"] == 10 * 4 * 96 * 2
    assert snapshot["reuse"] == {"value": 2, "auto": False, "max": 8}


def test_text_view_names_every_section(snapshot):
    text = format_stats(snapshot)
    for part in ("chunks/s", "pool      0/10 chunks", "R=2 (fixed, max 8)", "workers   0 alive",
                 "excerpts  5 rendered, 1 with the pre-roll capped", "rejected  silence 18", "song err  parse 1",
                 "banned    0 songs", "clients   0", "malformed 2"):
        assert part in text
    banned = {**snapshot, "banned_songs": {"count": 1, "songs": [
        {"song_id": "0" * 16, "path": "a.mid", "reason": "killed 3 workers"}]}}
    assert "banned    1 songs\n  a.mid: killed 3 workers" in format_stats(banned)
    assert "stemstream_banned_songs 1.0" in prometheus_text(banned).splitlines()


def test_prometheus_text_is_well_formed(snapshot):
    lines = prometheus_text(snapshot).splitlines()
    samples = [line for line in lines if not line.startswith("#")]
    assert samples and all(SAMPLE.match(line) for line in samples), [l for l in samples if not SAMPLE.match(l)]
    assert 'stemstream_chunks_total{stage="rendered"} 30.0' in samples
    assert 'stemstream_rejected_total{reason="silence"} 18.0' in samples
    assert "stemstream_reuse{auto=\"0\"} 2.0" in samples


def test_metrics_endpoint_serves_the_published_snapshot(snapshot):
    server = MetricsServer("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 503
        server.publish(snapshot)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
        assert resp.status == 200 and body == prometheus_text(snapshot)
    finally:
        server.close()
