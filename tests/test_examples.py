"""Dataset examples, their cache, the gallery's pieces and the sanity check, on the real model."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fvexp.app.gallery import parse_channels
from fvexp.errors import FvexpError
from fvexp.optvis import examples, sanity
from fvexp.optvis.data import open_image, scan
from fvexp.optvis.objectives import channel, neuron, per_image
from fvexp.optvis.params import Fourier, Pixel, fit

LAYER = "_blocks.8"


def acts_of(model, folder: Path, cache: Path, unit=None) -> examples.Activations:
    return examples.activations(model, unit or channel(LAYER, 5).unit, folder, size=224, batch_size=16, workers=0,
                                model_key="efficientnet-lite0", cache_dir=cache, progress=False)


def test_bad_folders_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FvexpError, match=r"^folder='.*' is not a folder; point folder at a folder of images"):
        scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FvexpError, match=r"holds nothing: fvexp reads \.jpeg, \.jpg, \.png, \.webp files at any depth"):
        scan(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("hello")
    with pytest.raises(FvexpError, match="holds 1 other file"):
        scan(tmp_path / "texts")


def test_a_folder_of_files_that_are_not_images_is_an_error(model, tmp_path: Path) -> None:
    (tmp_path / "fake").mkdir()
    for i in range(3):
        (tmp_path / "fake" / f"photo{i}.jpg").write_text("not a jpeg")
    with pytest.raises(FvexpError, match=r"none of the 3 image files .* could be read as an image"):
        acts_of(model, tmp_path / "fake", tmp_path / "cache")


@pytest.mark.slow  # a pass of the real model over the demo folder
def test_top_examples_really_excite_the_unit_and_unreadable_files_are_counted(model, demo_folder, tmp_path) -> None:
    folder = Path(shutil.copytree(demo_folder, tmp_path / "photos"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    acts = acts_of(model, folder, tmp_path / "cache")
    unit = channel(LAYER, 5).unit
    assert acts.unreadable == [folder / "broken.jpg"] and len(acts.files) == 91
    chosen = examples.select(acts, unit, k=4, spectrum=5)
    top, bottom, spectrum = (np.array([e.value for e in chosen[key]]) for key in ("top", "bottom", "spectrum"))
    assert (np.diff(top) <= 0).all() and (np.diff(spectrum) <= 0).all() and (np.diff(bottom) >= 0).all()
    assert top[0] == spectrum[0] and bottom[0] == spectrum[-1] and top[-1] > bottom[-1]

    # the ranking is the model's own: recomputing the top and bottom images' activations agrees
    images = torch.stack([open_image(e.file, 224) for e in (chosen["top"][0], chosen["bottom"][0])])
    with torch.no_grad(), model.reading([LAYER]) as read:
        maps = read(images)[LAYER][:, 5]
    assert maps[0].max().item() == pytest.approx(top[0], rel=1e-4)
    assert maps[1].max().item() == pytest.approx(bottom[0], rel=1e-4)
    y, x = chosen["top"][0].position
    assert maps[0, y, x].item() == maps[0].max().item()

    crop = examples.receptive_field(model, LAYER, 224)
    paths = examples.write(tmp_path / "out", acts, unit, chosen, 224, crop)
    assert {"top", "bottom", "top_crops", "bottom_crops", "spectrum", "histogram", "csv", "overview"} <= paths.keys()
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 90 and "broken.jpg" not in {r["file"] for r in rows}  # readable images only
    assert float(rows[0]["activation"]) == pytest.approx(top[0], rel=1e-4) and rows[0]["file"].count("/") == 1


def test_activations_are_cached_per_layer_and_invalidated_by_a_changed_folder(model, demo_folder, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for file in sorted(demo_folder.rglob("*.jpg"))[:10]:
        (folder / file.name).write_bytes(file.read_bytes())
    first = acts_of(model, folder, tmp_path / "cache")
    other_channel = acts_of(model, folder, tmp_path / "cache", channel(LAYER, 40).unit)
    assert not first.cached and other_channel.cached  # any channel of the layer reads the same cache
    np.testing.assert_array_equal(first.values, other_channel.values)
    assert not acts_of(model, folder, tmp_path / "cache", neuron(LAYER, 5).unit).cached  # another reduction
    os.utime(next(folder.iterdir()), ns=(1, 1))
    assert not acts_of(model, folder, tmp_path / "cache").cached  # a changed file is a new folder


@pytest.mark.slow  # a pass of the real model over the demo folder
def test_neuron_examples_rank_by_the_centre_and_class_examples_by_the_logit(model, demo_folder, tmp_path) -> None:
    unit = neuron(LAYER, 5).unit
    acts = acts_of(model, demo_folder, tmp_path / "cache", unit)
    assert {e.position for e in examples.select(acts, unit, 3, 1)["top"]} == {(7, 7)}
    from fvexp.optvis.objectives import class_prob

    logits = class_prob("Egyptian cat", "_fc").unit
    acts = acts_of(model, demo_folder, tmp_path / "cache", logits)
    best = examples.select(acts, logits, 1, 1)["top"][0]
    assert best.file.stem == "chelsea" and best.position is None and 0 < best.value <= 1


def test_receptive_field_grows_with_depth(model) -> None:
    early, late = examples.receptive_field(model, "_blocks.2", 224), examples.receptive_field(model, LAYER, 224)
    assert 4 <= early < late < 224, (early, late)


def test_gallery_channel_lists_and_ranges() -> None:
    assert parse_channels(None, 4, LAYER) == [0, 1, 2, 3]
    assert parse_channels("2-5", 112, LAYER) == [2, 3, 4, 5] and parse_channels([9, 1, 9], 112, LAYER) == [1, 9]
    with pytest.raises(FvexpError, match=r"task.channels=100-120 goes beyond layer '_blocks.8', which has 112 "
                                         r"channels: use channels in 0..111"):
        parse_channels("100-120", 112, LAYER)
    with pytest.raises(FvexpError, match="is not a channel list"):
        parse_channels("all", 112, LAYER)


def test_per_image_gives_each_image_its_own_channel() -> None:
    acts = {LAYER: torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 2, 2)}
    values = per_image([channel(LAYER, 0), channel(LAYER, 2)])(acts)
    assert values.tolist() == [channel(LAYER, 0)(acts)[0].item(), channel(LAYER, 2)(acts)[1].item()]


@pytest.mark.parametrize("param", [Fourier, Pixel])
def test_a_parameterization_can_start_from_natural_images(param, photos) -> None:
    torch.manual_seed(0)
    p = param(batch=2, size=224)
    assert fit(p, photos[:2]) > 24  # dB: the start is the photo, not noise


@pytest.mark.slow  # a pass of the real model over the demo folder
def test_the_sanity_check_tells_natural_images_from_a_flat_grey(model, demo_folder, tmp_path) -> None:
    unit = channel(LAYER, 5).unit
    acts = acts_of(model, demo_folder, tmp_path / "cache", unit)
    ranked = examples.select(acts, unit, k=12, spectrum=1)["top"]
    natural = torch.stack([open_image(e.file, 224) for e in ranked[8:]])  # good photos not among the top 8 compared
    grey = torch.full((1, 3, 224, 224), 0.5)
    assert sanity.path_layers(model, LAYER) == [f"_blocks.{i}" for i in range(9)]
    like_nature = sanity.check(model, LAYER, natural, acts, ranked[:8], 224, 0, tmp_path)
    flat = sanity.check(model, LAYER, grey, acts, ranked[:8], 224, 0, tmp_path)
    assert like_nature["sanity_score"] > flat["sanity_score"] + 0.15, (like_nature, flat)
    assert 0 <= flat["sanity_score"] <= 1 and len([k for k in flat if k.startswith("sanity.layer.")]) == 9
    assert (tmp_path / "sanity.json").exists()
