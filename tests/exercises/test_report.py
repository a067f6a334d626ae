"""``adamlab report``: one self-contained HTML page; rendered in headless Chromium when installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from adamlab.lab import report as rp
from tests.lab.records import assert_valid_record


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(rp.command, ["--quick", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_report_is_self_contained(built) -> None:
    out, doc = built
    page = (out / "report.html").read_text()
    sections = doc["results"]["sections"]
    assert [s["key"] for s in sections] == list(rp.SECTIONS)
    assert doc == json.loads((out / "report.json").read_text())
    assert_valid_record(doc, "report")
    # figures: inline SVG (text stays text), one per section; the whole page stays small
    assert page.count('<figure class="figure"') == len(rp.SECTIONS) == page.count("<svg")
    assert len(page.encode()) < 3_000_000
    # nothing to fetch: no external URL in a src/href, no stylesheet or script file
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    for s in sections:
        assert s["command"].startswith("adamlab ") and s["command"] in page
        assert s["conclusions"] and all(c in html.unescape(page) for c in s["conclusions"])
    assert "loss: " in page  # the book's lines of the chapter run
    assert doc["config"]["seed"] == 0 and "torch" in doc["versions"]


def test_report_tables_are_html_tables_and_versions_a_list(built) -> None:
    out, _ = built
    page = (out / "report.html").read_text()
    assert "<pre>" not in page  # no fixed-width text tables
    assert page.count("<table>") >= len(rp.SECTIONS)
    assert "<th>final loss</th>" in page or '<th class="">final loss</th>' in page
    assert re.search(r"<dt>torch</dt><dd>[0-9]", page) and "{&#34;" not in page  # not a JSON dump


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
