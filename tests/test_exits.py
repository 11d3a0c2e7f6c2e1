"""Bad input stops the command with one line and exit code 2, whatever part of the command line it is in."""

from __future__ import annotations

from pathlib import Path

import pytest

from fvexp.app import batches
from fvexp.app.job import run_task
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job
from fvexp.app.schema import validate
from fvexp.errors import FvexpError
from tests.conftest import ROOT, fvexp, make

CASES = [  # (arguments, the one line after "fvexp: error: ")
    (["objective.chanel=3"], "unknown key 'objective.chanel'; closest valid: objective.channel"),
    (["objective=chanel"], "unknown objective option 'chanel'; closest valid: channel. objective options: "
                           + ", ".join(sorted(f.stem for f in (ROOT / "conf" / "objective").glob("*.yaml")))),
    (["ablation=tvv"], "unknown ablation option 'tvv'; closest valid: tv. ablation options: "  # an optional group
                       + ", ".join(sorted(f.stem for f in (ROOT / "conf" / "ablation").glob("*.yaml")))),
    (["--cfg", "job", "render.steps=-5"],
     "render.steps=-5 is not allowed: render.steps must be a positive number of optimization steps"),
    (["--cfg", "job", "task=atlas", "objective.layer=_blocks.8", "data.dir={tmp}", "task.grid=0"],  # a task's own
     "task.grid=0 is not allowed: task.grid must be at least 1"),
    (["--config-dir", "{tmp}/conf", "objective=broken"],
     "{tmp}/conf/objective/broken.yaml is not valid YAML: mapping values are not allowed here at line 2, column 10; "
     "fix the file, or leave it out of --config-dir"),
    (["hydra.run.dir={tmp}/" + "x" * 300],
     "cannot write the run folder {tmp}/" + "x" * 300 + ": File name too long; choose another hydra.run.dir (or "
     "hydra.sweep.dir), one you can write, with names the filesystem accepts"),
]


@pytest.mark.slow  # an fvexp process each (no model is loaded: each stops before any job)
@pytest.mark.parametrize(("arguments", "line"), CASES, ids=["key", "option", "optional", "cfg-range", "cfg-task",
                                                            "yaml", "folder"])
def test_bad_input_before_any_job_is_one_line_and_exit_code_2(arguments: list[str], line: str,
                                                              tmp_path: Path) -> None:
    (tmp_path / "conf" / "objective").mkdir(parents=True)
    (tmp_path / "conf" / "objective" / "broken.yaml").write_text("layer: _blocks.8\n  channel: : 3\n")
    done = fvexp(*(a.format(tmp=tmp_path) for a in arguments), "tracking=none", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"fvexp: error: {line.format(tmp=tmp_path)}"]


def test_an_interrupted_gallery_says_what_it_kept_and_how_to_go_on(model, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    rendered = batches.render_batch

    def stopped_at_the_second(cfg, model, transforms, tracker, folder, number, batch) -> bool:
        if number == 1:
            raise KeyboardInterrupt  # Ctrl-C between the two batches' optimizations
        return rendered(cfg, model, transforms, tracker, folder, number, batch)

    monkeypatch.setattr(batches, "render_batch", stopped_at_the_second)
    cfg = make("task=gallery", "task.channels=[0,1]", "task.per_batch=1", "render.steps=2", "render.size=64",
               "progress=false", "tracking=none", f"task.dir={tmp_path / 'gallery'}")
    (tmp_path / "run").mkdir()
    result = run_task(cfg, model, Job(tmp_path / "run", []), Recorder())
    assert result.status == "KILLED"
    assert (f"fvexp: interrupted: 1 of 2 channels are done and kept in {tmp_path / 'gallery'}; run the same command "
            "again to go on from there") in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("transforms.pieces.pad.width=-5", "transforms.pieces.pad.width=-5 is not allowed: transforms.pieces.pad.width "
                                       "must be 0 or more pixels (a negative pad would crop)"),
    ("transforms.pieces.jitter.pixels=-1", "transforms.pieces.jitter.pixels=-1 is not allowed: "
                                           "transforms.pieces.jitter.pixels must be 0 or more pixels of jitter"),
    ("transforms.pieces.scale.factors=[0,1]", "transforms.pieces.scale.factors=[0, 1] is not allowed: "
                                              "transforms.pieces.scale.factors must be positive scale factors"),
])
def test_transform_pieces_out_of_range_are_named(override: str, message: str) -> None:
    with pytest.raises(FvexpError) as error:
        validate(make(override))
    assert str(error.value) == message
