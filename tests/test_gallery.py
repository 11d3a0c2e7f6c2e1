"""Dataset examples, the gallery and dataset-seeded starts through the command line, with a real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from fvexp.optvis.data import open_image
from tests.conftest import ROOT, chromium_page, fvexp

pytestmark = pytest.mark.slow
SMALL = ["render.size=96", "progress=false", "data.workers=0"]


def store(folder: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{folder / 'outputs' / 'mlflow.db'}")


def only_run(folder: Path):
    client = store(folder)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


def test_dataset_examples_task_ranks_the_folder_and_the_second_query_hits_the_cache(demo_folder, tmp_path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("imagenet", "skimage"):  # 7 + 6 photos
        (tmp_path / "data" / name).symlink_to(demo_folder / name)
    (tmp_path / "data" / "notes.jpg").write_text("not an image")
    done = fvexp("task=dataset_examples", f"data.dir={tmp_path / 'data'}", "objective.channel=5", "data.k=4",
                 f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "run" / "examples.png")
    assert "1 of 14 files could not be read as images and were skipped" in done.stderr
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.metrics["examples.unreadable"] == 1
    assert run.data.metrics["examples.images"] == 14 and run.data.metrics["examples.cached"] == 0
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "examples")}
    assert {f"examples/{v}.png" for v in ("top", "top_crops", "bottom", "spectrum", "histogram")} <= logged
    assert "examples/activations.csv" in logged

    again = fvexp("task=dataset_examples", f"data.dir={tmp_path / 'data'}", "objective.channel=77", *SMALL,
                  cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    client = store(tmp_path)
    latest = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert latest.data.metrics["examples.cached"] == 1  # another channel of the same layer: no second pass


def test_a_run_with_data_shows_its_examples_and_the_sanity_check(demo_folder, model, tmp_path) -> None:
    out = tmp_path / "run"
    done = fvexp("objective.channel=5", "render.steps=64", f"data.dir={demo_folder}", "data.k=4",
                 f"hydra.run.dir={out}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "image.png").exists() and (out / "examples.png").exists() and (out / "sanity.json").exists()
    client, run = only_run(tmp_path)
    metrics = run.data.metrics
    assert 0 <= metrics["sanity_score"] <= 1 and "sanity.layer._blocks.0" in metrics
    assert metrics["interpretability.low"] <= metrics["interpretability"] <= metrics["interpretability.high"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["interpretability.examples"] == metrics["interpretability.examples"] and "sanity_score" in saved
    assert "examples.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the optimized image excites the unit beyond the best natural example (its strongest position)
    with torch.no_grad(), model.reading(["_blocks.8"]) as read:
        optimized = read(open_image(out / "image.png", 96)[None])["_blocks.8"][0, 5].max().item()
    assert optimized > metrics["examples.top1"], (optimized, metrics["examples.top1"])
    report = json.loads((out / "sanity.json").read_text())
    assert set(report["layers"]) == {f"_blocks.{i}" for i in range(9)} and report["explanation"]


def test_dataset_examples_seed_the_batch(demo_folder, tmp_path) -> None:
    done = fvexp("param.init=dataset_examples", f"data.dir={demo_folder}", "render.batch=2", "render.steps=4",
                 "render.thresholds=[1]", f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, run = only_run(tmp_path)
    assert run.data.metrics["init_psnr"] > 24
    init = json.loads((tmp_path / "run" / "init.json").read_text())
    assert len(init["files"]) == 2 and init["psnr_db"] == pytest.approx(run.data.metrics["init_psnr"])
    # after one step, each image is still its seed photo (the best two of the folder for the channel)
    for i, file in enumerate(init["files"]):
        start = open_image(tmp_path / "run" / "steps" / f"step_00001_{i}.png", 96)
        assert (start - open_image(Path(file), 96)).abs().mean() < 0.06


def test_the_gallery_is_batched_resumable_and_browsable(demo_folder, model, tmp_path) -> None:
    args = ["task=gallery", "task.channels=0-5", "task.per_batch=2", "render.steps=48", f"data.dir={demo_folder}",
            *SMALL]
    process = subprocess.Popen([sys.executable, "-m", "fvexp", *args, f"hydra.run.dir={tmp_path / 'first'}"],
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list((tmp_path / "outputs" / "gallery").glob("*/channel_0001.json")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    [folder] = (tmp_path / "outputs" / "gallery").iterdir()
    kept = sorted(p.name for p in folder.glob("*.json"))
    assert kept[:2] == ["channel_0000.json", "channel_0001.json"] and len(kept) in (2, 4)  # whole batches only
    assert (tmp_path / "first" / "gallery.png").exists()

    done = fvexp(*args, f"hydra.run.dir={tmp_path / 'second'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resuming the gallery in {folder}: {len(kept)} of 6 channels are done" in done.stdout
    assert sorted(p.name for p in folder.glob("*.png")) == [f"channel_{c:04d}.png" for c in range(6)]
    page = (tmp_path / "second" / "index.html").read_text()
    assert page.count("<figure") == 6 and page.count('class="ex"') == 6 * 4  # each channel with 4 examples
    assert page.count("interpretability 0.") + page.count("interpretability 1.") == 6  # each channel scored

    # each image excites its own channel more than the other channels' images do
    images = torch.stack([open_image(folder / f"channel_{c:04d}.png", 96) for c in range(6)])
    with torch.no_grad(), model.reading(["_blocks.8"]) as read:
        means = read(images)["_blocks.8"][:, :6].mean((2, 3))
    assert (means.argmax(0) == torch.arange(6)).all(), means
    client = store(tmp_path)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert runs[1].data.tags["fvexp.per_batch"] == "2"
    assert {"gallery.png", "index.html"} <= {a.path for a in client.list_artifacts(runs[1].info.run_id)}
    metrics = runs[1].data.metrics
    per_channel = [metrics[f"interpretability.channel.{c}"] for c in range(6)]
    assert metrics["interpretability"] == pytest.approx(sum(per_channel) / 6)
    with chromium_page(tmp_path / "second" / "index.html") as shown:  # what a reader sees: every image decoded
        widths = shown.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
        assert len(widths) == 6 + 6 * 4 and min(widths) > 0, widths
        assert shown.locator("#c3 figcaption").inner_text().startswith("channel 3 · ")


@pytest.mark.parametrize(("args", "message"), [
    (["task=gallery", "task.channels=100-120"], "task.channels=100-120 goes beyond layer '_blocks.8', which has 112"),
    (["task=dataset_examples", "data.dir=nowhere"], "data.dir='nowhere' is not a folder"),
    (["task=dataset_examples"], "data.dir=None is not allowed: data.dir must be an image folder"),
    (["task=dataset_examples", "objective=layer", "data.dir=."],
     "task=dataset_examples needs an objective about one unit"),
])
def test_bad_input_is_one_clear_error(args: list[str], message: str, tmp_path: Path) -> None:
    done = fvexp(*args, *SMALL, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
