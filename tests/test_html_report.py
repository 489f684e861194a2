"""Reports are self-contained HTML that a real browser renders with every image decoded."""

import numpy as np
import pytest

from matrl.reports.browser import check_images, find_chromium
from matrl.reports.html import HtmlReport, ImageCell

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (make test installs it)")


def _report(tmp_path, broken=False):
    page = HtmlReport("a <report>")
    page.heading("numbers")
    page.table(["model", "reward"], [["before", 0.5], ["after", float("nan")]])
    rng = np.random.default_rng(0)
    page.grid([[ImageCell(rng.random((16, 16, 3)), "target"), ImageCell(rng.integers(0, 255, (16, 16, 3), np.uint8))]],
              header=["target", "render"])
    page.image(rng.random((8, 8)), caption="gray")
    if broken:
        page.parts.append('<img alt="corrupt" src="data:image/png;base64,AAAA">')
    return page.write(tmp_path / "report.html")


def test_report_is_one_escaped_file_with_embedded_images(tmp_path):
    text = _report(tmp_path).read_text()
    assert "a &lt;report&gt;" in text and "<script" not in text
    assert text.count("data:image/png;base64,") == 3
    assert "http://" not in text and "https://" not in text
    assert "–" in text  # NaN shown as a dash


@needs_chromium
def test_report_images_all_decode_in_headless_chromium(tmp_path):
    result = check_images(_report(tmp_path))
    assert result.images == 3 and result.broken == []
    # and the check can fail: a corrupt image is reported
    result = check_images(_report(tmp_path, broken=True))
    assert result.images == 4 and result.broken == ["corrupt"]
