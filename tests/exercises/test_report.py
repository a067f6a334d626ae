"""``adamlab report``: one self-contained HTML page; rendered in headless Chromium when installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from adamlab.lab import report as rp


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(rp.command, ["--quick", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_report_is_self_contained(built) -> None:
    out, doc = built
    page = (out / "report.html").read_text()
    assert [s["key"] for s in doc["sections"]] == list(rp.SECTIONS)
    figures = re.findall(r'<img class="figure" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(figures) == len(rp.SECTIONS) and all(len(f) > 10_000 for f in figures)
    # nothing to fetch: no external URL in a src/href, no stylesheet or script file
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    for s in doc["sections"]:
        assert s["command"].startswith("adamlab ") and s["command"] in page
    assert "loss: " in page  # the book's lines of the chapter run
    assert doc["seed"] == 0 and "torch" in doc["versions"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(built, tmp_path) -> None:
    out, _ = built
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        (out / "report.html").as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r'data-figures-loaded="(\d+)"', dom)
    assert match, dom[:500]
    assert int(match.group(1)) == len(rp.SECTIONS)  # every embedded figure decoded
