"""Learned priors (issue 13): the prior file and its errors, the prior as penalty and as parameterization,
feature statistics from data and feature accentuation, on the real model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch

import fvexp
from fvexp.app.build import check_fits
from fvexp.app.job import start_from
from fvexp.app.priors import spatial_path
from fvexp.app.schema import validate
from fvexp.errors import FvexpError
from fvexp.optvis import priors, regularizers
from fvexp.optvis.data import open_image, scan
from fvexp.optvis.features import LOGITS
from fvexp.optvis.metrics import high_frequency_energy
from fvexp.optvis.objectives import channel
from fvexp.optvis.optimizers import adam
from fvexp.optvis.params import Pixel, PriorLatent, fit
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose, standard
from tests.conftest import fvexp as fvexp_cli
from tests.conftest import make

SIZE = 64
TINY = {"crop": 32, "steps": 60, "batch": 8, "width": 16, "latent": 8, "depth": 2}


def tiny_prior(images: torch.Tensor, path: Path, **settings: int) -> Path:
    """A prior trained in a second or two: small crops, few steps, a narrow network."""
    net = priors.train(images, **{**TINY, **settings})
    return priors.save(net, path, images.shape[-1], {})


@pytest.fixture(scope="module")
def folder_images(demo_folder: Path) -> torch.Tensor:
    files = scan(demo_folder)[::6]
    return torch.stack([open_image(f, SIZE) for f in files])


def test_a_prior_file_round_trips_and_its_decoder_draws_images_of_the_run(tmp_path: Path) -> None:
    images = torch.rand(3, 3, SIZE, SIZE)
    path = tiny_prior(images, tmp_path / "prior.pt", steps=3)
    param = PriorLatent(batch=2, size=SIZE, path=str(path))
    drawn = param()
    assert drawn.shape == (2, 3, SIZE, SIZE) and drawn.min() >= 0 and drawn.max() <= 1
    assert all(not p.requires_grad for p in param.prior.parameters())  # only the latent code moves
    assert [name for name, p in param.named_parameters() if p.requires_grad] == ["code"]


def test_bad_prior_files_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FvexpError, match=r"^path: the prior file .*nowhere.pt' does not exist; train one with "
                                         r"priors.train\(images\) and save it with priors.save"):  # Python's words
        PriorLatent(batch=1, size=SIZE, path=str(tmp_path / "nowhere.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a prior at all")
    with pytest.raises(FvexpError, match=r"^path: .*corrupt.pt' is not a readable fvexp prior"):
        regularizers.prior(str(corrupt))
    stranger = tmp_path / "stranger.pt"
    torch.save({"weights": torch.zeros(3)}, stranger)
    with pytest.raises(FvexpError, match=r"is not a readable fvexp prior file"):
        PriorLatent(batch=1, size=SIZE, path=str(stranger))
    path = priors.save(priors.Autoencoder(channels=3, width=8), tmp_path / "prior.pt", SIZE, {})
    with pytest.raises(FvexpError, match=rf"trained on images of {SIZE} px and the run's images are 96 px; use "
                                         rf"image size={SIZE}, or train a prior with training image size=96"):
        PriorLatent(batch=1, size=96, path=str(path))
    with pytest.raises(FvexpError, match=r"trained on 3-channel images and the model takes 1-channel images"):
        PriorLatent(batch=1, size=SIZE, path=str(path), channels=1)
    with pytest.raises(FvexpError, match=r"PriorLatent needs path=PRIOR_FILE"):
        PriorLatent(batch=1, size=SIZE)


def test_terms_that_need_data_say_what_is_missing(tmp_path: Path, model) -> None:
    with pytest.raises(FvexpError, match=r"data.dir=None is not allowed: data.dir must be an image folder with "
                                         "regularizers.feature_stats.weight"):
        validate(make("regularizers.feature_stats.weight=1"))
    with pytest.raises(FvexpError, match=r"param.image must be an image file to start from with param.init=image"):
        validate(make("param.init=image"))
    with pytest.raises(FvexpError, match=r"path=PRIOR_FILE is needed with a weight on the prior term"):
        regularizers.prior()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cfg = SimpleNamespace(param=SimpleNamespace(init="image", image=str(text)),
                          render=SimpleNamespace(size=SIZE, batch=1))
    with pytest.raises(FvexpError, match=r"param.image: cannot read .*notes.png' as an image"):
        start_from(cfg, model, channel("_blocks.6", 3), Pixel(1, SIZE), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(FvexpError, match=r"^image: the image .* does not exist"):
        regularizers.path(str(tmp_path / "missing.jpg"), ["_blocks.2"])


def visualize(model, penalty=None, param=None, steps: int = 48) -> torch.Tensor:
    objective = channel("_blocks.6", 3)
    objective = objective - penalty if penalty is not None else objective
    objective.prepare(model, model.probe(objective.network_layers, SIZE))
    param = param or Pixel(1, SIZE, sd=0.1)
    return render(model, objective, param, Compose({}), adam(lr=0.05), steps, seed=0, progress=False).image


@pytest.mark.slow
def test_a_prior_trained_in_seconds_lowers_high_frequency_energy_on_the_real_model(model, folder_images,
                                                                                 tmp_path) -> None:
    path = str(tiny_prior(folder_images, tmp_path / "prior.pt"))
    plain = visualize(model)
    as_penalty = visualize(model, penalty=300_000 * regularizers.prior(path))  # a tiny prior denoises gently
    in_latent = visualize(model, param=PriorLatent(1, SIZE, path=path))
    energy = {name: high_frequency_energy(x) for name, x in (("plain", plain), ("penalty", as_penalty),
                                                              ("latent", in_latent))}
    # measured: plain 0.672, penalty 0.544 (0.667 at weight 3000), latent 0.007
    assert energy["penalty"] < 0.85 * energy["plain"] and energy["latent"] < 0.1 * energy["plain"], energy
    with model.reading(["_blocks.6"]) as read:  # and the unit is still driven
        assert read(in_latent)["_blocks.6"][:, 3].mean() > read(folder_images)["_blocks.6"][:, 3].mean()


@pytest.mark.slow
def test_train_prior_prints_its_file_last_and_runs_record_its_checksum(demo_folder: Path, tmp_path: Path) -> None:
    done = fvexp_cli("task=train_prior", f"data.dir={demo_folder}", f"data.size={SIZE}", "task.steps=20",
                     "task.crop=32", "task.width=16", "progress=false", f"hydra.run.dir={tmp_path / 'train'}",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    prior = Path(done.stdout.strip().splitlines()[-1])
    assert prior == tmp_path / "train" / "prior.pt" and (tmp_path / "train" / "denoised.png").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    [trained] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [m.step for m in client.get_metric_history(trained.info.run_id, "objective")] == [10, 20]
    assert {"train_loss", "held_out_psnr"} <= set(trained.data.metrics)
    digest = trained.data.tags["prior.sha256"]
    assert len(digest) == 64

    result = fvexp.run("param=prior", f"param.path={prior}", f"regularizers.prior.path={prior}",
                       "regularizers.prior.weight=10", f"render.size={SIZE}", "render.steps=4", "progress=false",
                       "objective.layer=_blocks.4", f"tracking.uri=sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}",
                       f"hydra.run.dir={tmp_path / 'render'}")
    assert result.status == "FINISHED"
    assert client.get_run(result.run_id).data.tags["prior.sha256"] == digest  # one file, read twice: one checksum
    with pytest.raises(FvexpError, match=rf"use render.size={SIZE}"):
        fvexp.run("param=prior", f"param.path={prior}", "render.size=96", "render.steps=4", "progress=false",
                  "tracking=none", f"hydra.run.dir={tmp_path / 'wrong'}")


@pytest.mark.slow
def test_feature_stats_and_feature_accentuation_run_from_the_command_line_config(demo_folder: Path,
                                                                                 tmp_path: Path) -> None:
    common = ("objective.layer=_blocks.6", "objective.channel=3", "render.size=96", "render.steps=12",
              "progress=false", "tracking=none", f"data.dir={demo_folder}", f"data.cache_dir={tmp_path / 'cache'}",
              "data.workers=0")
    stats = fvexp.run(*common, "regularizers.feature_stats.weight=1", f"hydra.run.dir={tmp_path / 'stats'}")
    assert stats.status == "FINISHED" and "sanity_score" in stats.metrics
    assert (tmp_path / "stats" / "sanity.json").exists()

    cat = next(f for f in scan(demo_folder) if f.stem == "chelsea")
    start = open_image(cat, 96)[None]
    distance = {}
    for weight in (0, 10):
        run = fvexp.run(*common, "param.init=image", f"param.image={cat}", f"regularizers.path.weight={weight}",
                        f"hydra.run.dir={tmp_path / f'path{weight}'}")
        distance[weight] = (run.image - start).pow(2).mean().item()
        assert (tmp_path / f"path{weight}" / "init.json").exists()
    assert distance[10] < distance[0], distance  # the path term keeps the accentuated photo near the photo


def test_fit_starts_a_prior_latent_from_a_photo(folder_images: torch.Tensor, tmp_path: Path) -> None:
    path = tiny_prior(folder_images, tmp_path / "prior.pt", steps=3)
    param = PriorLatent(1, SIZE, path=str(path))
    assert fit(param, folder_images[:1], steps=5) > 5.0  # dB: the fit moved the code towards the photo


def test_the_path_of_a_class_is_the_maps_before_the_pooling(model) -> None:
    # feature accentuation towards a class keeps these near the photo's; the pooled vector and the
    # logits are what the objective moves
    assert spatial_path(model, LOGITS) == ["_bn0", "_conv_head", "_bn1"]
    assert spatial_path(model, "_blocks.2") == ["_blocks.0", "_blocks.1", "_blocks.2"]
    check_fits(model, channel("_avg_pooling", 3), standard(), 224)  # a global pooling needs no 256 px image


class RunsCode:
    """What a malicious pickle holds: unpickling it would call os.system."""

    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("echo this ran",))


def test_a_cut_a_malicious_and_a_future_prior_file_are_each_one_line_saying_what_the_file_is(tmp_path: Path) -> None:
    # issue 22: torch's messages cut mid-sentence ("[Errno 22] Invalid argument", "Re-running `torch."), and
    # a file of format version 7 was used as if it were version 2
    good = priors.save(priors.Autoencoder(width=8), tmp_path / "prior.pt", SIZE, {})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    evil = tmp_path / "evil.pt"
    torch.save({"format": priors.FORMAT, "version": 2, "state": RunsCode()}, evil)
    future = tmp_path / "future.pt"
    torch.save({**torch.load(good, weights_only=True), "version": 7}, future)
    cases = {cut: rf"is not a readable fvexp prior file: it is cut short \({cut.stat().st_size} bytes: it begins as a "
                  r"torch file and its end is missing",
             evil: r"is not a readable fvexp prior file: it is a pickle that would run Python code \(posix.system\) "
                   r"when loaded, and fvexp loads only tensors and numbers from a prior, never code; train one",
             future: r"is an fvexp prior of format version 7, and this fvexp reads versions 1 and 2; use the fvexp "
                     r"that wrote it, or train one"}
    for path, message in cases.items():
        with pytest.raises(FvexpError, match=rf"^path: '{path}' {message}") as error:
            PriorLatent(batch=1, size=SIZE, path=str(path))
        assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_an_interrupted_training_keeps_the_network_of_its_last_whole_step(monkeypatch) -> None:
    # issue 22: Ctrl-C or SIGTERM during the training lost it all
    images, settings = torch.rand(3, 3, SIZE, SIZE), {**TINY, "steps": 50}

    def stop_after_two(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt  # what Ctrl-C, or fvexp's SIGTERM handler, raises

    after_two = priors.train(images, **settings, on_step=stop_after_two)
    update, updates = torch.optim.Adam.step, []

    def update_then_stop_on_the_third(self: torch.optim.Adam, *args, **kwargs) -> None:
        update(self, *args, **kwargs)  # step 3 has written its weights, and is not over
        updates.append(1)
        if len(updates) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim.Adam, "step", update_then_stop_on_the_third)
    within_three = priors.train(images, **settings)
    assert after_two.steps_done == within_three.steps_done == 2 and len(updates) == 3
    assert not within_three.training and not any(p.requires_grad for p in within_three.parameters())
    assert all(torch.equal(a, b) for a, b in zip(after_two.state_dict().values(), within_three.state_dict().values(),
                                                  strict=True))  # step 3's half-made update is undone
