"""The figure: a valid, non-trivial PNG (and SVG), drawn without pyplot."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from adamlab.lab.chapter import run_chapter
from adamlab.lab.plots import BOOK_YLIM, STYLE, figure_bytes


@pytest.fixture(scope="module")
def result():
    return run_chapter(optimizers=["adam"], epochs=1)


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


def test_png_is_valid_and_not_trivial(result):
    raw = figure_bytes(result.plot(), "png")
    width, height, pixels = _png_rgba(raw)
    assert (width, height) == (3 * 340, 270)  # three panels of 3.4 x 2.7 inches at 100 dpi
    colors = {tuple(c) for c in pixels.reshape(-1, 4)[::7]}
    assert len(colors) > 20  # curves, axes, text, not a blank canvas

    def count(rgb):
        return int((np.abs(pixels[..., :3].astype(int) - rgb).sum(axis=-1) < 30).sum())

    assert count((0x1F, 0x77, 0xB4)) > 100  # the Adam colour, drawn in every panel


def test_the_chapter_figure_has_the_books_form(result):
    """Loss vs epoch, one run per panel, on the book's y range 0.22-0.35, the floor dashed."""
    fig = result.plot()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(result.runs) == 3
    for ax, run in zip(axes, result.runs):
        assert ax.get_ylim() == pytest.approx(BOOK_YLIM)
        assert ax.get_xlim() == pytest.approx((0, 1.0))
        assert ax.get_title() == run.name and [t.get_text() for t in ax.texts] == [run.book_line()]
        highlighted = [line for line in ax.get_lines() if line.get_label() == run.name]
        assert len(highlighted) == 1 and list(highlighted[0].get_xdata()) == run.epochs
        floor = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(floor) == 1 and floor[0].get_ydata()[0] == pytest.approx(result.floor)
    assert axes[0].get_ylabel().startswith("loss") and all(ax.get_xlabel() == "epoch" for ax in axes)


def test_five_runs_make_a_grid_and_curves_out_of_range_autoscale(result):
    from adamlab.lab.plots import plot_curves

    runs = result.runs * 2  # six panels: 2 rows x 3
    fig = plot_curves(runs[:5], floor=result.floor)
    assert sum(ax.get_visible() for ax in fig.axes) == 5 and len(fig.axes) == 6

    class Far:
        name, epochs, losses = "diverging", [0.5, 1.0], [0.5, 2.0]

    fig = plot_curves([Far()], floor=result.floor)
    assert fig.axes[0].get_ylim()[1] > 2.0  # not clipped to the book's range


def test_one_style_for_every_figure(result):
    """Every lab figure is drawn in plots.style(): one title size, one colour per optimizer."""
    from adamlab.lab.bias import bias
    from adamlab.lab.compare import compare
    from adamlab.lab.decay import decay
    from adamlab.lab.init_batches import init_batches
    from adamlab.lab.plots import color

    small = {"epochs": 1, "batch_size": 100}
    figures = [
        result.plot(),
        compare(("sgd", "adam"), **small).plot(),
        decay(("constant",), **small).plot(),
        bias(**small).plot(),
        init_batches(2, batch_size=100).plot(),
    ]
    for fig in figures:
        assert {ax.title.get_fontsize() for ax in fig.axes if ax.get_visible()} == {float(STYLE["axes.titlesize"])}
    adam_lines = [line for line in figures[1].axes[0].get_lines() if line.get_label() == "adam"]
    assert adam_lines[0].get_color() == color("adam") == color("adamlab.Adam")  # adam's colour everywhere


def test_single_run_plot_and_svg(result):
    fig = result.runs[0].plot(floor=result.floor)
    svg = figure_bytes(fig, "svg")
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    with pytest.raises(ValueError, match="plot format"):
        figure_bytes(fig, "gif")
    assert io.BytesIO(figure_bytes(fig)).getvalue()[:4] == b"\x89PNG"
