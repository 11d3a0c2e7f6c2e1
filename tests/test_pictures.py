"""What fvexp draws besides its visualizations: a batch's grid, the plots (matplotlib) and the pages (jinja2)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from fvexp.app.pages import write_page
from fvexp.optvis.images import picture, to_pil
from fvexp.optvis.plots import histogram, scatter


def colours(image) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in pixel) for pixel in np.asarray(image).reshape(-1, 3)}


def test_a_batch_is_one_near_square_grid_of_its_images_on_white() -> None:
    shades = torch.rand(5, 3, 1, 1)
    sheet = np.asarray(picture(shades.expand(5, 3, 6, 10).clone(), gap=2))
    assert sheet.shape == (2 * 6 + 2, 3 * 10 + 2 * 2, 3)  # 3 columns, 2 rows, no border outside
    for i in range(5):
        row, col = divmod(i, 3)
        place = sheet[row * 8 : row * 8 + 6, col * 12 : col * 12 + 10]
        assert (place == shades[i, :, 0, 0].mul(255).round().byte().numpy()).all()
    assert (sheet[6:8] == 255).all() and (sheet[:, 10:12] == 255).all() and (sheet[8:, 24:] == 255).all()
    one = torch.rand(1, 3, 6, 10)
    assert np.array_equal(np.asarray(picture(one)), np.asarray(to_pil(one[0])))  # a batch of one: the image
    assert picture(torch.rand(2, 4, 6, 10)).size == (2 * 4 * 10 + 4, 6)  # 4 input channels: 4 grey tiles an image


def test_the_histogram_shows_its_bars_and_each_mark() -> None:
    values = np.random.default_rng(0).normal(size=300)
    drawn = colours(histogram(values, {"top 9": 1.5, "optimized": 6.0}, "_blocks.8:5 over 300 images"))
    assert {(70, 130, 180), (220, 20, 60), (255, 140, 0)} <= drawn  # steelblue bars, crimson and darkorange marks


def test_the_scatter_colours_the_ten_most_frequent_classes_and_greys_the_rest() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), np.arange(12, 0, -1) * 10)  # class 0 the most frequent
    drawn = colours(scatter(rng.random((len(labels), 2)), labels, [f"class {i}" for i in range(12)], grid=4))
    tab10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
             (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    assert set(tab10) <= drawn and (204, 204, 204) in drawn


def test_pages_escape_every_value_as_html_escape_does(tmp_path: Path) -> None:
    layer = "<b>\"x\" & 'y'</b>"
    page = write_page(tmp_path / "index.html", "gallery.html", layer=layer, cards=[], steps=2, size=64, per_batch=3,
                      examples=0, data_dir=None).read_text()
    assert page.count(html.escape(layer)) == 2 and "<b>" not in page  # the title and the heading
    assert "2 steps at 64 px, 3 channels per batch</p></body></html>\n" in page
