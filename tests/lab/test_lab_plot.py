"""The figure: a valid, non-trivial PNG (and SVG), drawn without pyplot."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from adamlab.lab.chapter import chapter
from adamlab.lab.plots import figure_bytes, save_figure


@pytest.fixture(scope="module")
def result():
    return chapter(optimizers=["adam"], epochs=1)


def _png_rgba(raw: bytes) -> tuple[int, int, np.ndarray]:
    """Check the PNG signature and every chunk's CRC, then decode it with Pillow."""
    from PIL import Image

    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, body = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", raw[pos + 8 + length : pos + 12 + length])[0]
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image.width, image.height, np.asarray(image.convert("RGBA"))


def test_png_is_valid_and_not_trivial(result, tmp_path):
    path = save_figure(result.plot(), tmp_path / "loss.png")
    raw = path.read_bytes()
    width, height, pixels = _png_rgba(raw)
    assert (width, height) == (640, 400)
    colors = {tuple(c) for c in pixels.reshape(-1, 4)[::7]}
    assert len(colors) > 20  # curves, axes, text, not a blank canvas

    # The runs' colors are drawn: C0 (scratch Adam) and C2 (adamlab.Adam) as curves; C1
    # (torch.optim.Adam) lies under C2, the same curve, and shows in the legend.
    def count(rgb):
        return int((np.abs(pixels[..., :3].astype(int) - rgb).sum(axis=-1) < 30).sum())

    assert count((0x1F, 0x77, 0xB4)) > 100 and count((0x2C, 0xA0, 0x2C)) > 100 and count((0xFF, 0x7F, 0x0E)) > 0


def test_plot_shows_every_run_and_the_floor(result):
    fig = result.plot()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["scratch Adam", "torch.optim.Adam", "adamlab.Adam"]
    assert labels[3].startswith("least-squares floor")
    floor_line = ax.get_lines()[-1]
    assert floor_line.get_linestyle() == "--" and floor_line.get_ydata()[0] == pytest.approx(result.floor)
    assert list(ax.get_lines()[0].get_xdata()) == result.runs[0].epochs


def test_single_run_plot_and_svg(result):
    fig = result.runs[0].plot(floor=result.floor)
    svg = figure_bytes(fig, "svg")
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    with pytest.raises(ValueError, match="plot format"):
        figure_bytes(fig, "gif")
    assert io.BytesIO(figure_bytes(fig)).getvalue()[:4] == b"\x89PNG"
