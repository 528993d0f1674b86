"""`trainer report`: the static page loads in headless Chromium, every <audio> plays, every image decodes."""
import functools
import http.server
import json
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest
import soundfile as sf

from trainer.cli import main

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Loads the report in an iframe (same origin over http), then asks the browser itself to load
# every <audio> source and decode every image; the verdict lands in the DOM for --dump-dom.
CHECK_PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
async function run() {
  const frame = document.createElement('iframe'); frame.src = 'report/index.html';
  document.body.appendChild(frame); await new Promise(r => frame.onload = r);
  const doc = frame.contentDocument;
  const audio = await Promise.all(Array.from(doc.querySelectorAll('audio')).map(a => new Promise(r => {
    const t = new Audio(); t.preload = 'auto';
    t.onloadedmetadata = () => r({src: a.getAttribute('src'), ok: t.duration > 0, duration: t.duration});
    t.onerror = () => r({src: a.getAttribute('src'), ok: false, error: t.error && t.error.code});
    t.src = a.src; t.load(); })));
  const images = await Promise.all(Array.from(doc.querySelectorAll('img')).map(i => i.decode().then(
    () => ({src: i.getAttribute('src'), ok: i.naturalWidth > 0}), () => ({src: i.getAttribute('src'), ok: false}))));
  const th = doc.querySelector('#excerpts th:nth-child(4)'); th.click();
  const sorted = Array.from(doc.querySelectorAll('#excerpts tbody tr')).map(r => r.cells[3].dataset.v);
  document.getElementById('out').textContent = 'RESULT' + JSON.stringify({audio, images, sorted}) + 'END';
}
run().catch(e => document.getElementById('out').textContent = 'RESULT' + JSON.stringify({error: String(e)}) + 'END');
</script></body></html>"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def browser_check(root, timeout=90) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt install chromium): the report page is not checked in a browser")
    (root / "check.html").write_text(CHECK_PAGE)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={root / 'chrome-profile'}",
                               "--virtual-time-budget=30000", "--dump-dom",
                               f"http://127.0.0.1:{server.server_address[1]}/check.html"],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        server.shutdown()
    found = re.search(r"RESULT(\{.*?\})END", done.stdout)
    assert found, f"no verdict from chromium: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return json.loads(found.group(1))


@pytest.mark.slow
def test_report_page_plays_and_shows_everything(busy_corpus, tiny_checkpoints, tmp_path, capsys):
    root, split = busy_corpus
    out = tmp_path / "site" / "report"
    code = main(["report", "--checkpoint", str(tiny_checkpoints[0]), "--checkpoint", str(tiny_checkpoints[1]),
                 "--corpus", str(root), "--split", split, "--n", "2", "--seconds", "1.5", "--out", str(out),
                 "--device", "cpu", "--bss", "off"])
    assert code == 0 and "report:" in capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    page = (out / "index.html").read_text()
    # per excerpt: mixture + 4 references + 2 models x 4 estimates
    assert page.count("<audio") == 2 * (1 + 4 + 2 * 4)
    assert page.count("<section") == 2 and "summary.png" in page and (out / "table.txt").is_file()
    mixture = sf.read(next(out.glob("media/*/mixture.flac")))[0]
    assert np.abs(mixture).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)     # the excerpt's shared gain
    verdict = browser_check(tmp_path / "site")
    assert "error" not in verdict, verdict
    assert len(verdict["audio"]) == 26 and all(a["ok"] for a in verdict["audio"]), verdict["audio"]
    assert all(a["duration"] == pytest.approx(1.5, abs=0.01) for a in verdict["audio"])
    assert len(verdict["images"]) == 1 + 26 and all(i["ok"] for i in verdict["images"]), verdict["images"]
    values = [float(v) for v in verdict["sorted"] if v != ""]
    assert len(values) == 2 * 4 - sum(s["skipped_silent"] for s in
                                      result["conditions"][0]["summary"]["a/last"].values())
    assert values == sorted(values)                 # one click sorts by model a's SI-SDR
