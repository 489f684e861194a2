"""Load a report in a real headless browser (Debian's Chromium) and say which images failed to decode.

A copy of the page gets a small script that, once the page has loaded, lists every <img> whose
`naturalWidth` is 0 (not decoded) and writes the verdict into the DOM; Chromium's `--dump-dom`
prints that DOM. Used by the tests of `matrl eval` and `matrl demo` reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 60));
  const out = document.createElement('pre');
  out.id = 'matrl-probe';
  out.textContent = 'MATRL-PROBE images=' + imgs.length + ' broken=' + JSON.stringify(broken);
  document.body.appendChild(out);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--dump-dom"]


@dataclass
class PageCheck:
    images: int
    broken: list[str]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_images(page: str | Path, timeout_s: float = 120.0) -> PageCheck:
    """Open `page` in headless Chromium; how many images it has and which did not decode."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (Debian package 'chromium')")
    text = Path(page).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "page.html"
        probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        profile = Path(tmp) / "profile"
        out = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", probe.as_uri()],
                             capture_output=True, text=True, timeout=timeout_s)
    match = re.search(r"MATRL-PROBE images=(\d+) broken=(\[.*?\])", out.stdout)
    if match is None:
        raise RuntimeError(f"Chromium did not report on {page}: {out.stderr[-1500:]}")
    import json

    return PageCheck(int(match.group(1)), json.loads(match.group(2).replace("&quot;", '"')))
