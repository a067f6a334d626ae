"""benchmarks/d2l_baseline.py rewrites only its own section of the shared RESULTS.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BASELINE = Path(__file__).resolve().parents[2] / "benchmarks" / "d2l_baseline.py"


def _module():
    spec = importlib.util.spec_from_file_location("d2l_baseline", BASELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_section_replaces_only_the_lab_section(tmp_path):
    bench = _module()
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## CPU\n\ncpu text\n\n## Lab: chapter speed\n\nold\n\n## GPU\n\ngpu text\n")
    bench.write_section(path, "## Lab: chapter speed\n\nnew numbers\n")
    text = path.read_text()
    assert "old" not in text and "new numbers" in text
    assert text.index("## CPU") < text.index("cpu text") < text.index("new numbers") < text.index("## GPU")
    assert text.endswith("gpu text\n") and "new numbers\n\n## GPU" in text
    fresh = tmp_path / "FRESH.md"
    bench.write_section(fresh, "## Lab: chapter speed\n\nfirst\n")
    assert fresh.read_text().count("## Lab: chapter speed") == 1
