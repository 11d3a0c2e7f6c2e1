"""The activation atlas: grid binning and its errors (fast), and whole atlases on the real model (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fvexp
from fvexp.app.atlas import atlas_dir, attempt_name, keep_best
from fvexp.app.build import CPU_PER_BATCH, batch_size, build
from fvexp.app.schema import validate
from fvexp.errors import FvexpError
from fvexp.optvis import atlas as lib
from fvexp.optvis import objectives
from fvexp.optvis.data import open_image, scan
from fvexp.optvis.metrics import high_frequency_energy
from fvexp.optvis.objectives import direction, direction_neuron, per_image
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose, Jitter
from tests.conftest import chromium_page, make
from tests.conftest import fvexp as run_fvexp

LAYER = "_blocks.8"
SMALL = ["render.size=64", "progress=false", "data.workers=0"]


def test_cells_average_what_falls_in_them_and_leave_sparse_cells_empty() -> None:
    xy = np.array([[0.1, 0.9], [0.2, 0.8], [0.15, 0.95], [0.9, 0.1], [0.6, 0.2], [0.55, 0.6]])
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    [top_left] = lib.cells(xy, vectors, grid=2, min_count=3)
    assert (top_left.row, top_left.col, top_left.count) == (0, 0, 3)  # row 0 is the top of the layout (y near 1)
    assert np.allclose(top_left.direction, vectors[:3].mean(0))
    assert [c.count for c in lib.cells(xy, vectors, grid=2, min_count=1)] == [3, 1, 2]


def test_a_sample_too_small_for_the_grid_is_one_clear_error() -> None:
    with pytest.raises(FvexpError, match=r"6 activation vectors, too few for a grid=3 atlas .*grid=2 or"):
        lib.cells(np.random.rand(6, 2), np.random.rand(6, 4), grid=3)
    with pytest.raises(FvexpError, match=r"no cell of the grid=2 atlas holds min_count=5"):
        lib.cells(np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]] * 2), np.ones((8, 4)), 2, 5)


def test_the_sample_not_the_folder_bounds_what_is_read() -> None:
    chosen = lib.choose(1_000_000, per_image=8, total=4000, seed=0)
    assert len(chosen) == 500 and (np.diff(chosen) > 0).all()
    assert (lib.choose(100, 8, 4000) == np.arange(100)).all()  # a small folder is read whole


def test_the_atlas_task_composes_and_checks_its_settings() -> None:
    cfg = make("task=atlas", f"objective.layer={LAYER}")
    assert cfg.task.grid == 20 and cfg.task.class_filter is None
    atlas_optimizer = cfg.optimizer  # the atlas's own optimizer, unless one is asked for
    assert (atlas_optimizer._target_, atlas_optimizer.lr, atlas_optimizer.per_image) == (
        "fvexp.optvis.optimizers.Adam", 0.02, True) and make().optimizer._target_ == "torch.optim.Adam"
    assert make("task=atlas", "optimizer=adam").optimizer._target_ == "torch.optim.Adam"
    assert make("task=atlas", "ablation=descent_l2").optimizer.metric == "l2"  # an ablation's optimizer wins too
    with pytest.raises(FvexpError, match=r"data.dir=None is not allowed: data.dir must be an image folder"):
        validate(cfg)  # the task's own check, run before any model is loaded
    with pytest.raises(FvexpError, match=r"task.grid=0 is not allowed"):
        validate(make("task=atlas", "data.dir=photos", "task.grid=0"))


def test_the_atlas_optimizer_renders_a_flat_regions_direction_smooth_where_adam_makes_it_noise(model) -> None:
    """A plain sky's direction at _blocks.8, the kind of weak direction a flat-region cell holds: per-coefficient
    Adam fills the image with grey high-frequency noise (HF 0.40), Adam per image renders soft shapes (0.04)."""
    sky = torch.tensor([0.55, 0.7, 0.9]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    with torch.no_grad(), model.reading([LAYER]) as read:
        aim = direction(LAYER, read(sky)[LAYER].mean((0, 2, 3)).tolist(), cossim_pow=1.0)
    energy = {}
    for name, cfg in (("adam", make()), ("atlas", make("task=atlas"))):
        torch.manual_seed(0)
        result = render(model, aim, Fourier(1, 64), Compose([Jitter(4)]), build(cfg.optimizer), 64, 0, progress=False)
        assert result.values[-1] > 1.4 * result.values[0], result.values  # both climb the direction (510 to 760, 1110)
        energy[name] = high_frequency_energy(result.image)
    assert energy["atlas"] < 0.1 < 0.25 < energy["adam"], energy


def test_a_folder_named_relative_or_absolute_gives_one_atlas_folder(demo_folder: Path, model, monkeypatch) -> None:
    monkeypatch.chdir(demo_folder.parent)
    relative, absolute = (make("task=atlas", f"objective.layer={LAYER}", f"data.dir={folder}")
                          for folder in (demo_folder.name, demo_folder))
    files = scan(demo_folder)
    folder = atlas_dir(absolute, model, LAYER, files, 16)
    assert atlas_dir(relative, model, LAYER, scan(demo_folder.name), 16) == folder
    assert atlas_dir(absolute, model, LAYER, files[:-1], 16) != folder != atlas_dir(absolute, model, LAYER, files, 8)


def test_without_a_cuda_card_a_null_per_batch_is_16_and_a_set_one_is_kept(model) -> None:
    cfg = make("task=gallery")
    assert cfg.task.per_batch is None

    def first(n: int) -> objectives.Objective:
        return per_image([objectives.channel(LAYER, 0)] * n)

    assert batch_size(cfg, model, build(cfg.transforms), first, 112, cfg.task.per_batch) == CPU_PER_BATCH == 16
    cfg = make("task=atlas", "task.per_batch=5")
    assert batch_size(cfg, model, build(cfg.transforms), first, 400, cfg.task.per_batch) == 5
    with pytest.raises(FvexpError, match=r"task.per_batch=0 is not allowed"):
        batch_size(cfg, model, build(cfg.transforms), first, 400, 0)


def direction_values(model: fvexp.FeatureModel, images: torch.Tensor, directions: list[np.ndarray]) -> torch.Tensor:
    """(images, directions): the atlas's own objective (Lucid's dot × cos) of each unit direction on each image."""
    with torch.no_grad(), model.reading([LAYER]) as read:
        acts = {LAYER: read(images)[LAYER]}
    return torch.stack([direction(LAYER, (d / np.linalg.norm(d)).tolist(), 1.0)(acts) for d in directions], 1)


def test_the_own_direction_check_reads_every_position_or_the_centre_as_the_objectives_do(model) -> None:
    torch.manual_seed(0)
    images, raw = torch.rand(2, 3, 64, 64), torch.randn(3, 112)
    with torch.no_grad(), model.reading([LAYER]) as read:
        acts = {LAYER: read(images)[LAYER]}
    for centre, piece in ((False, direction), (True, direction_neuron)):
        expected = torch.stack([piece(LAYER, (d / d.norm()).tolist(), 1.0)(acts) for d in raw], 1)
        assert torch.allclose(lib.excitation(model, LAYER, images, raw, 1.0, centre=centre), expected, atol=1e-4)


def test_whitening_damps_what_every_position_shares_and_keeps_what_sets_a_cell_apart() -> None:
    rng = np.random.default_rng(0)
    shared = np.abs(rng.normal(size=16)) + 1  # the layer's average vector, everywhere
    apart = np.zeros(16)
    apart[3] = 1.0  # what one cell's positions add to it
    vectors = np.abs(rng.normal(size=(2000, 16))) * 0.3 + shared
    vectors[:100] += apart
    s = lib.whitening(vectors)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    cell = vectors[:100].mean(0)
    assert cos(cell, shared) > 0.95 and cos(cell, apart) < 0.3  # the raw mean is mostly the shared part
    assert cos(s @ cell, apart) > 0.8  # whitened, it points at what sets the cell apart


def test_of_several_attempts_a_cell_keeps_the_one_its_objective_rates_highest_once_all_are_done(tmp_path) -> None:
    cells = [lib.Cell(0, 1, np.arange(3), np.ones(4, np.float32)), lib.Cell(2, 0, np.arange(3), np.ones(4, np.float32))]
    assert attempt_name(cells[0], 0, 1) == "cell_00_01"  # one attempt: the cell's own name, as before
    for cell, values in zip(cells, ([1.5, 4.0, 2.0], [3.0, None, 9.0]), strict=True):
        for a, value in enumerate(values):
            name = attempt_name(cell, a, 3)
            (tmp_path / f"{name}.png").write_bytes(name.encode())
            if value is not None:  # the second cell's attempt 1 is not finished
                (tmp_path / f"{name}.json").write_text(json.dumps({"count": 3, "objective": value}))
    keep_best(tmp_path, cells, 3)
    assert (tmp_path / "cell_00_01.png").read_bytes() == b"cell_00_01-attempt1"
    assert json.loads((tmp_path / "cell_00_01.json").read_text()) == {"count": 3, "objective": 4.0,
                                                                      "attempt": "cell_00_01-attempt1"}
    assert not (tmp_path / "cell_02_00.png").exists()  # kept only once every attempt is finished


@pytest.mark.slow
def test_an_atlas_of_the_demo_folder_renders_each_cell_for_its_own_direction(demo_folder, model, tmp_path) -> None:
    args = ["task=atlas", f"objective.layer={LAYER}", f"data.dir={demo_folder}", "task.grid=3", "task.per_batch=5",
            "render.steps=256", *SMALL]  # Adam per image climbs more slowly: at 128 steps one cell of 9 fell short
    done = run_fvexp(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    assert done.stdout.strip().splitlines()[-1] == str(out / "atlas.png")
    [folder] = (tmp_path / "outputs" / "atlas").iterdir()
    sample = lib.Sample.load(folder / "sample.npz")
    cells = lib.cells(np.load(folder / "layout.npy"), sample.vectors, 3, 3)
    assert len(sample.vectors) == 90 * 8 and sum(c.count for c in cells) <= len(sample.vectors)

    # each rendered cell excites its own direction more than the other cells' directions
    images = torch.stack([open_image(folder / f"{c.name}.png", 64) for c in cells])
    values = direction_values(model, images, [c.direction for c in cells])
    assert (values.argmax(1) == torch.arange(len(cells))).all(), values

    page = (out / "index.html").read_text()
    assert page.count("<section") == len(cells) and "the head says" in page
    assert all(f"<b>{c.count}</b> positions" in page for c in cells)
    assert page.count('title="') >= len(cells) * 2  # crops of the cell's images, named by their file
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["atlas.cells"] == len(cells) and metrics["atlas.own_direction_share"] == 1.0
    assert {"atlas.seconds.sample", "atlas.seconds.layout", "atlas.seconds.render"} <= set(metrics)
    import mlflow  # 2-3 s to import: only in the slow test that reads the store

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.metrics["atlas.cells"] == len(cells)
    assert {"atlas.png", "scatter.png", "index.html"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    again = run_fvexp(*args, "tracking=none", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"resuming the atlas in {folder}: {len(cells)} of {len(cells)} cells are done" in again.stdout
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["atlas.seconds.render"] < 1
    with chromium_page(out / "index.html") as shown:  # every image decodes; a cell of the grid links to its card
        widths = shown.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
        assert len(widths) >= 2 * len(cells) and min(widths) > 0, widths
        assert shown.locator(".atlas > *").count() == 9  # a link per rendered cell, an empty place per other
        link = shown.locator(".atlas a").first
        target = link.get_attribute("href").removeprefix("#")
        link.click()
        assert shown.evaluate("document.querySelector(':target').id") == target
        assert "positions; the head says" in shown.locator(f"#{target}").inner_text()


@pytest.mark.slow
def test_a_class_atlas_from_python_keeps_only_that_class(demo_folder, model, tmp_path) -> None:
    kept = tmp_path / "kept"
    with pytest.raises(FvexpError, match=r"too few for a task.grid=40 atlas"):
        fvexp.atlas(model, LAYER, demo_folder, grid=40, dir=str(kept), steps=4, size=64, progress=False)
    sample = lib.Sample.load(kept / "sample.npz")  # the sample is kept even though the grid was refused
    label = int(np.bincount(sample.predicted[sample.predicted >= 0]).argmax())
    name = model.classes[label]
    result = fvexp.atlas(model, LAYER, demo_folder, grid=2, min_count=2, class_filter=name, steps=4, size=64,
                         progress=False, out_dir=tmp_path / "py", dir=str(tmp_path / "class"))
    ours = int((sample.predicted[sample.image] == label).sum())
    assert len(np.load(tmp_path / "class" / "layout.npy")) == ours < len(sample.vectors)
    assert result.image.shape[1:] == (3, 64, 64) and result.metrics["atlas.vectors"] == ours
    assert f"of images predicted {name}" in (tmp_path / "py" / "index.html").read_text()
    assert Path(result.path).name == "atlas.png" and (tmp_path / "py" / "scatter.png").exists()


@pytest.mark.slow
def test_an_atlas_with_several_attempts_shows_each_cells_best(demo_folder, model, tmp_path) -> None:
    kept = tmp_path / "kept"
    result = fvexp.atlas(model, LAYER, demo_folder, grid=2, samples=160, attempts=2, per_batch=8, steps=4, size=64,
                         dir=str(kept), progress=False)  # 20 images read: the sample and layout take seconds
    records = sorted(kept.glob("cell_??_??.json"))
    assert len(records) == result.metrics["atlas.cells"] > 0
    for record in records:
        shown = json.loads(record.read_text())
        tries = [json.loads((kept / f"{record.stem}-attempt{a}.json").read_text())["objective"] for a in range(2)]
        best = f"{record.stem}-attempt{tries.index(max(tries))}"
        assert shown["objective"] == max(tries) and shown["attempt"] == best
        assert record.with_suffix(".png").read_bytes() == (kept / f"{shown['attempt']}.png").read_bytes()
