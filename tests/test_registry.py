"""Configs are the registry: a new option is its code and its YAML, and nothing of fvexp's is edited.

A parameterization and a task are written here into a temporary folder (a module on the Python
path, and a config folder given with `--config-dir` or `hydra.searchpath`), then run end to end by
the command line and by `fvexp.run`: their settings' schemas come from their signatures.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from fvexp.errors import FvexpError
from tests.conftest import ROOT, fvexp

CODE = '''
"""A throwaway parameterization and task, outside fvexp."""

import torch
from torch import Tensor, nn

from fvexp.app.job import render_task
from fvexp.optvis.params import Param


class Tiled(Param):
    """One `tile`x`tile` patch repeated over the whole image."""

    def __init__(self, batch: int, size: int, tile: int = 8, channels: int = 3) -> None:
        super().__init__(decorrelate=False)
        self.size = size
        self.patch = nn.Parameter(torch.randn(batch, channels, tile, tile) * 0.01)

    def raw(self) -> Tensor:
        copies = -(-self.size // self.patch.shape[-1])
        return self.patch.repeat(1, 1, copies, copies)[..., : self.size, : self.size]


def stamped(cfg, model, job, tracker, *, text: str = "plain"):
    """task=render, then `text` in stamp.txt beside the image."""
    result = render_task(cfg, model, job, tracker)
    (job.out_dir / "stamp.txt").write_text(text)
    return result
'''
OPTIONS = {"param/tiled.yaml": "# A tile repeated over the image.\n_target_: throwaway.Tiled\n",
           "task/stamped.yaml": "# Render, and stamp a text beside the image.\n_target_: throwaway.stamped\n"}
RUN = ["param=tiled", "param.tile=4", "task=stamped", "task.text=hello", "render.steps=2", "render.size=64",
       "tracking=none", "progress=false"]


@pytest.fixture
def throwaway(tmp_path: Path) -> tuple[Path, Path]:
    """(the module's folder, the config folder) of a parameterization and a task fvexp has never seen."""
    code, conf = tmp_path / "code", tmp_path / "conf"
    code.mkdir()
    (code / "throwaway.py").write_text(textwrap.dedent(CODE))
    for name, text in OPTIONS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    return code, conf


def tiled_by(image: Path, tile: int) -> bool:
    pixels = np.asarray(Image.open(image).convert("RGB"))
    return bool((pixels[tile:] == pixels[:-tile]).all() and (pixels[:, tile:] == pixels[:, :-tile]).all())


@pytest.mark.slow
def test_a_new_parameterization_and_task_run_from_the_command_line(throwaway: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    code, conf = throwaway
    env = {"PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    done = fvexp("--config-dir", str(conf), *RUN, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "run"
    assert done.stdout.strip().splitlines()[-1] == str(run / "image.png")
    assert (run / "stamp.txt").read_text() == "hello"  # the task's own setting reached its function
    assert tiled_by(run / "image.png", 4) and not tiled_by(run / "image.png", 2)  # and the param's reached its class
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert OmegaConf.to_container(saved.task) == {"_target_": "throwaway.stamped", "text": "hello", "name": "stamped"}
    assert saved.param.tile == 4 and saved.param._partial_ and saved.param.init == "noise"  # its group's keys too


@pytest.mark.parametrize("wrong,said", [("param.tiel=4", "unknown key 'param.tiel'; closest valid: param.tile"),
                                        ("param.tile=big", "param.tile=big"),
                                        ("task.txet=hi", "unknown key 'task.txet'; closest valid: task.text")])
def test_a_new_options_keys_and_types_are_checked_as_fvexps_own(throwaway: tuple[Path, Path], wrong: str,
                                                               said: str, monkeypatch) -> None:
    from fvexp.app.api import _compose

    monkeypatch.syspath_prepend(str(throwaway[0]))
    with pytest.raises(FvexpError) as error:
        _compose([f"hydra.searchpath=[file://{throwaway[1]}]", *RUN, wrong])
    assert said in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_a_new_parameterization_and_task_run_from_python(throwaway: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch) -> None:
    import fvexp as package

    code, conf = throwaway
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.chdir(tmp_path)
    result = package.run(f"hydra.searchpath=[file://{conf}]", *RUN, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.status == "FINISHED" and result.image.shape == (1, 3, 64, 64)
    assert (tmp_path / "run" / "stamp.txt").read_text() == "hello"
    assert tiled_by(tmp_path / "run" / "image.png", 4)
