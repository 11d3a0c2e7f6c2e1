"""Reliability campaign, round two (issue 22): run each fault case against a tree of fvexp, record what happened.

    .venv/bin/python benchmarks/fault_campaign.py --round after  --code /work/main
    .venv/bin/python benchmarks/fault_campaign.py --round before --code /tmp/campaign-old   # `git archive HEAD`
    .venv/bin/python benchmarks/fault_campaign.py --doc docs/reliability.md               # the table, from both

Each case runs alone (one at a time: the cores are shared) in its own temporary folder, with its own
MLflow store there, as a fresh process of `python -m fvexp` (or `python -m fvexp.tools.X`, or a
`python -c` snippet for the Python API) on the tree given by --code. What is recorded per case: the exit
code, whether stdout or stderr holds a Python traceback, whether it ran past its time limit (a hang),
the last line of stderr, whether the run folder's image exists where one was expected, and how many
runs any SQLite store in the case's folder holds RUNNING once every process of the case has ended.
Results go to benchmarks/results/fault_campaign-ROUND.json, one entry per case, written as they come,
so that a round cut short by its --deadline keeps what it ran. Cases that load the model are run after
the quick ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path("/tmp/fault-campaign")
SHARED = WORK / "shared"  # photos, a template store, a prior: made once with the current tree
TOOLS = {"fvexp-compare": "compare", "fvexp-reproduce": "reproduce", "fvexp-claims": "claims",
         "fvexp-layers": "layers", "fvexp-server": "server", "fvexp-orphans": "orphans", "fvexp-demo": "demo"}
# Tiny settings for every fvexp command, unless the case sets the key itself.
BASE = ("render.steps=2", "render.size=64", "progress=false", "data.workers=0", "data.size=64",
        "measure.transfer=[]", "measure.judge=null", "hydra.run.dir={tmp}/run", "hydra.sweep.dir={tmp}/sweep")
FAST_TIMEOUT, SLOW_TIMEOUT = 90, 300
# The order of the cases that load the model, so that a round cut short by its deadline ran the ones that matter most.
# The quick cases of the 'before' round (run on a subset when time is short) follow the same order.
PRIORITY = ["signals", "sweeps", "tracking uri", "run folder", "measure", "cache", "data.dir", "priors", "atlas",
            "python api", "tools", "cli", "prior path", "objective.image", "param.spectrum_from", "model.weights_path"]


@dataclass
class Case:
    id: str
    surface: str
    command: list[str]  # ["fvexp", ARGS...], ["fvexp-TOOL", ARGS...] or ["py", CODE]
    expect: frozenset[int] = frozenset({2})
    setup: tuple[str, ...] = ()  # names in SETUPS, run in order in the case's folder
    slow: bool = False  # loads the model (or MLflow and a render): run after the quick cases
    image: str | None = None  # a path (under {tmp}) that must exist afterwards: the run kept its image
    signal: tuple[str, str, float] | None = None  # (SIGTERM|SIGINT|SIGKILL, glob under {tmp} to wait for, max wait)
    group: bool = False  # send the signal to the process group (Ctrl-C in a terminal)
    then: list[str] = field(default_factory=list)  # a second command after the signal (e.g. fvexp-orphans --mark)
    user: str | None = None  # run as this user (root reads everything: a permission case needs another)
    env: dict[str, str] = field(default_factory=dict)
    timeout: int = 0


def case(id: str, surface: str, *command: str, expect: set[int] | int = 2, **kw) -> Case:
    codes = frozenset({expect} if isinstance(expect, int) else expect)
    slow = kw.pop("slow", None)
    if slow is None:
        slow = 0 in codes or bool(kw.get("image")) or bool(kw.get("signal"))
    return Case(id, surface, list(command), codes, slow=slow, **kw)


# ----------------------------------------------------------------------------------------------- setups
# Each takes the case's folder and makes what the command needs there; names are used in the table.

def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _photos(tmp: Path, count: int = 6) -> Path:
    folder = tmp / "photos"
    folder.mkdir(exist_ok=True)
    for source in sorted((SHARED / "photos").iterdir())[:count]:
        shutil.copy(source, folder / source.name)
    return folder


def _mount(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)


def _torch_save(path: Path, expression: str) -> None:
    subprocess.run([sys.executable, "-c", f"import torch, collections; torch.save({expression}, {str(path)!r})"],
                   check=True)


def _store(tmp: Path, name: str = "s.db") -> Path:
    target = tmp / name
    shutil.copy(SHARED / "template.db", target)
    return target


def _half_created(tmp: Path) -> None:
    with sqlite3.connect(tmp / "half.db") as db:  # an interrupted first migration, as an old fvexp left it
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
        db.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name VARCHAR(256))")
        db.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER PRIMARY KEY)")


def _truncated_store(tmp: Path) -> None:
    data = (SHARED / "template.db").read_bytes()
    _write(tmp / "trunc.db", data[: len(data) // 3])


def _fifo_in_photos(tmp: Path) -> None:
    os.mkfifo(_photos(tmp) / "pipe.png")


def _symlink_loop(tmp: Path) -> None:
    folder = _photos(tmp, 3)
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to(folder)


def _garbage_images(tmp: Path) -> None:
    folder = _photos(tmp)
    _write(folder / "broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _write(folder / "text.jpg", "not an image\n")


def _only_garbage(tmp: Path) -> None:
    _write(tmp / "junk" / "a.png", b"garbage")
    _write(tmp / "junk" / "b.jpg", b"")


def _unreadable_photos(tmp: Path) -> None:
    folder = _photos(tmp)
    folder.chmod(0o000)
    tmp.chmod(0o777)


def _readable_tmp(tmp: Path) -> None:
    tmp.chmod(0o777)


def _truncated_png(tmp: Path) -> None:
    data = (sorted((SHARED / "photos").iterdir())[0]).read_bytes()
    _write(tmp / "trunc.png", data[: len(data) // 4])


def _prior_files(tmp: Path) -> None:
    shutil.copy(SHARED / "prior.pt", tmp / "prior.pt")
    _write(tmp / "text.pt", "not a prior\n")
    data = (SHARED / "prior.pt").read_bytes()
    _write(tmp / "trunc.pt", data[: len(data) // 2])
    _torch_save(tmp / "v9.pt", f"{{**torch.load({str(SHARED / 'prior.pt')!r}), 'version': 9}}")
    _torch_save(tmp / "tensors.pt", "{'w': torch.zeros(3)}")


def _weights_files(tmp: Path) -> None:
    _write(tmp / "empty.pt", b"")
    _write(tmp / "text.pt", "not weights\n")
    _torch_save(tmp / "list.pt", "[torch.zeros(1), torch.zeros(2)]")
    _torch_save(tmp / "checkpoint.pt", "{'epoch': 3, 'model': {'fc.weight': torch.zeros(2)}}")
    _torch_save(tmp / "whole.pt", "torch.nn.Linear(2, 2)")
    _torch_save(tmp / "wrong.pt", "{'conv1.weight': torch.zeros(1)}")
    (tmp / "state.pt").write_bytes((tmp / "wrong.pt").read_bytes()[: 40])


def _cache_ro(tmp: Path) -> None:
    _mount(tmp / "rocache", "ro,size=1m")


def _cache_damaged(tmp: Path) -> None:
    """Fill the activation cache with a first pass, then cut each of its files in half."""
    subprocess.run([sys.executable, "-m", "fvexp", "task=dataset_examples", f"data.dir={_photos(tmp)}",
                    f"data.cache_dir={tmp / 'cache'}", "tracking=none", "progress=false", "data.workers=0",
                    "data.size=64", f"hydra.run.dir={tmp / 'first'}"], cwd=tmp, capture_output=True, timeout=300)
    for path in (tmp / "cache").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _ro_dir(tmp: Path) -> None:
    _mount(tmp / "ro", "ro,size=1m")


def _full_small(tmp: Path) -> None:
    _mount(tmp / "full", "size=40k")


def _full_store(tmp: Path) -> None:
    _mount(tmp / "fullstore", "size=1300k")


def _config_dir(tmp: Path) -> None:
    _write(tmp / "conf" / "objective" / "broken.yaml", "layer: _blocks.8\n  channel: : 3\n")


def _store_template(tmp: Path) -> None:
    """The default store (outputs/mlflow.db), already created: the render cases do not each pay for MLflow's
    migrations (creating a store has its own cases)."""
    (tmp / "outputs").mkdir(exist_ok=True)
    _store(tmp, "outputs/mlflow.db")


def _files(tmp: Path) -> None:
    _write(tmp / "afile", "a file, not a folder\n")
    _write(tmp / "notes.db", "some notes, not SQLite\n")
    (tmp / "folder").mkdir()
    (tmp / "empty").mkdir()


SETUPS: dict[str, Callable[[Path], object]] = {
    "photos": _photos, "fifo": _fifo_in_photos, "loop": _symlink_loop, "garbage": _garbage_images,
    "only_garbage": _only_garbage, "unreadable": _unreadable_photos, "truncated_png": _truncated_png,
    "priors": _prior_files, "weights": _weights_files, "cache_ro": _cache_ro, "cache_damaged": _cache_damaged,
    "ro": _ro_dir, "full": _full_small, "full_store": _full_store, "config_dir": _config_dir,
    "store": lambda tmp: _store(tmp), "template": _store_template, "half": _half_created,
    "truncated_store": _truncated_store, "files": _files, "world": _readable_tmp,
}


# ------------------------------------------------------------------------------------------------ cases

NET = "import torch, fvexp, sys; net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())"


def api(id: str, body: str, expect: set[int] | int = 2, **kw) -> Case:
    """A Python API case: FvexpError is the one-line answer (exit 2); anything else is a traceback."""
    code = (f"{NET}\nfrom fvexp.errors import FvexpError\ntry:\n    r = {body}\n    print('result', r.path)\n"
            "except FvexpError as e:\n    print('fvexp.FvexpError:', e, file=sys.stderr); sys.exit(2)")
    return case(id, "python api", "py", code, expect=expect, **kw)


def cases() -> list[Case]:
    out: list[Case] = []
    add = out.append
    # -- the command line: unknown keys, one per config group and top-level family
    for key in ("objective.chanel=3", "model.nmae=x", "param.sdd=1", "optimizer.lrr=0.1", "tracking.urii=x",
                "task.stepz=3", "render.stpes=3", "data.dri=x", "regularizers.tv.wieght=1", "regularizers.nosuch=1",
                "diversity.wieght=1", "alignment.wieght=1", "measure.jduge=lite1", "transforms.nosuch=1",
                "seedd=1", "threadz=1", "devcie=cpu", "precison=fp16", "+render.extra=1", "~render"):
        add(case(f"key-{key.split('=')[0].lstrip('+~')}", "cli: unknown key", "fvexp", key))
    for option in ("objective=chanel", "model=efficientnet", "param=fouier", "transforms=standrd",
                   "optimizer=adamw", "tracking=mlflw", "task=rendr", "experiment=nosuch", "ablation=nosuch",
                   "hydra/launcher=jobilb"):
        add(case(f"option-{option.split('=')[0].replace('/', '-')}", "cli: unknown option", "fvexp", option))
    for value in ("render.steps=five", "render.size=abc", "seed=x", "threads=x", "progress=maybe", "precision=fp8",
                  "channels_last=maybe", "data.k=x", "optimizer.lr=fast", "render.thresholds=x", "render.steps=",
                  "render.steps=[1,2", "render.batch=1.5"):
        add(case(f"type-{value}", "cli: bad type", "fvexp", value))
    for value in ("render.steps=0", "render.steps=-5", "render.size=0", "render.size=20000", "render.batch=0",
                  "threads=0", "threads=-1", "data.size=0", "data.size=20000", "data.batch_size=0",
                  "data.workers=-1", "data.k=0", "data.spectrum=-1", "optimizer.betas=[2,3]", "optimizer.betas=[0.9]",
                  "optimizer.eps=-1e-8", "optimizer.weight_decay=-1", "optimizer=sgd optimizer.momentum=-5",
                  "optimizer=sgd optimizer.nesterov=true optimizer.momentum=0", "param=lowres param.factor=0",
                  "param=laplacian param.levels=0", "param=cppn param.hidden=0", "param=shared param.shared=[[1,0]]",
                  "regularizers.blur.sigma=0", "regularizers.bilateral.radius=-1", "alignment.decay_ratio=0",
                  "transforms.pieces.pad.width=-5", "transforms.pieces.jitter.pixels=-1",
                  "transforms.pieces.scale.factors=[0,1]", "model.std=[0,0,0]", "measure.references=0",
                  "measure.queries=0", "measure.bootstrap=0", "measure.judge=lite9", "measure.transfer=[lite9]",
                  "measure.judge=lite0", "measure.judge=lite3", "device=tpu", "precision=fp16 device=cpu"):
        add(case(f"range-{value.replace(' ', '-')}", "cli: value out of range", "fvexp", *value.split(),
                 expect={2} if "fp16" not in value else {0, 2}))
    add(case("cfg-range", "cli: --cfg", "fvexp", "--cfg", "job", "render.steps=-5"))
    add(case("cfg-ok", "cli: --cfg", "fvexp", "--cfg", "job", expect=0, slow=False))
    add(case("help", "cli: --help", "fvexp", "--help", expect=0, slow=False))
    add(case("unknown-flag", "cli: unknown flag", "fvexp", "--nosuch", expect=2))
    add(case("config-dir-yaml", "cli: broken yaml", "fvexp", "--config-dir", "{tmp}/conf", "objective=broken",
             setup=("config_dir",)))
    add(case("config-dir-missing", "cli: --config-dir missing", "fvexp", "--config-dir", "{tmp}/nosuch",
             expect=2))
    add(case("arithmetic-no-objective", "cli: objective terms", "fvexp", "objective=arithmetic",
             "objective.terms=[{weight: 1}]", slow=True))
    add(case("interpolate-null", "cli: objective terms", "fvexp", "objective=interpolate", "objective.a=null",
             slow=True))
    add(case("channel-out-of-range", "cli: needs the model", "fvexp", "objective.channel=100000", "tracking=none"))
    add(case("layer-unknown", "cli: needs the model", "fvexp", "objective.layer=nosuch", "tracking=none",
             slow=True))
    add(case("channel-of-vector-layer", "cli: needs the model", "fvexp", "objective.layer=_fc",
             "objective.channel=3", "tracking=none", slow=True))
    add(case("gallery-reversed", "cli: gallery", "fvexp", "task=gallery", "task.channels=9-3", "tracking=none"))
    add(case("gallery-per-batch-0", "cli: gallery", "fvexp", "task=gallery", "task.per_batch=0", "tracking=none"))
    add(case("render-ok", "cli: a plain render", "fvexp", setup=("template",), expect=0, image="run/image.png"))

    # -- tracking URIs (on_error=fail: the store is judged before the model is loaded)
    uris = {"sqlite-relative": "sqlite:///m.db", "sqlite-absolute": "sqlite:///{tmp}/abs.db",
            "file-relative": "file:mlruns", "file-absolute": "file://{tmp}/mlruns", "folder": "{tmp}/mlruns",
            "http-closed": "http://127.0.0.1:9", "http-password": "http://user:secret@127.0.0.1:9",
            "unknown-scheme": "nosuch://host/x", "mysql": "mysql://u@127.0.0.1:9/db",
            "postgres-closed": "postgresql://u@127.0.0.1:9/db", "sqlite-missing-folder": "sqlite:///{tmp}/missing/s.db",
            "sqlite-folder": "sqlite:///{tmp}/folder", "sqlite-text": "sqlite:///{tmp}/notes.db",
            "sqlite-half": "sqlite:///{tmp}/half.db", "sqlite-truncated": "sqlite:///{tmp}/trunc.db",
            "sqlite-readonly": "sqlite:///{tmp}/ro/s.db", "empty": "''", "sqlite-no-path": "sqlite://"}
    setups = ("files", "half", "truncated_store", "ro")
    for name, uri in uris.items():
        ok = name in ("sqlite-relative", "sqlite-absolute")
        add(case(f"uri-fail-{name}", "tracking uri (on_error=fail)", "fvexp", f"tracking.uri={uri}",
                 "tracking.on_error=fail", setup=setups, expect={0} if ok else {2},
                 image="run/image.png" if ok else None))
    for name in ("sqlite-relative", "file-relative", "http-closed", "unknown-scheme", "sqlite-half",
                 "sqlite-truncated", "sqlite-readonly", "sqlite-text", "mysql"):
        add(case(f"uri-warn-{name}", "tracking uri (on_error=warn)", "fvexp", f"tracking.uri={uris[name]}",
                 setup=setups, expect=0, image="run/image.png"))
    add(case("uri-folder-allowed", "tracking uri", "fvexp", "tracking.uri=mlruns", expect=0, image="run/image.png",
             env={"MLFLOW_ALLOW_FILE_STORE": "true"}))
    add(case("experiment-empty", "tracking uri", "fvexp", "tracking.experiment=''", expect={0, 2}))  # warn: renders
    add(case("store-full", "tracking uri: disk full", "fvexp", "render.steps=24",
             "render.thresholds=[4,8,12,16,20,24]", "render.size=128", "tracking.uri=sqlite:///{tmp}/fullstore/s.db",
             setup=("full_store",), expect=0, image="run/image.png"))

    # -- run folders and caches
    add(case("rundir-too-long", "run folder", "fvexp", "hydra.run.dir={tmp}/" + "x" * 300, "tracking=none"))
    add(case("rundir-readonly", "run folder", "fvexp", "hydra.run.dir={tmp}/ro/run", "tracking=none",
             setup=("ro",)))
    add(case("rundir-under-file", "run folder", "fvexp", "hydra.run.dir={tmp}/afile/run", "tracking=none",
             setup=("files",)))
    add(case("rundir-full", "run folder: disk full", "fvexp", "hydra.run.dir={tmp}/full/run", "tracking=none",
             "render.steps=4", "render.size=128", setup=("full",), expect={0, 2}, slow=True))
    add(case("sweepdir-too-long", "run folder", "fvexp", "-m", "hydra.sweep.dir={tmp}/" + "y" * 300,
             "tracking=none", "seed=0,1"))
    add(case("cache-readonly", "cache", "fvexp", "task=dataset_examples", "data.dir={tmp}/photos",
             "data.cache_dir={tmp}/rocache", "tracking=none", setup=("photos", "cache_ro"), expect=0))
    add(case("cache-under-file", "cache", "fvexp", "task=dataset_examples", "data.dir={tmp}/photos",
             "data.cache_dir={tmp}/afile/cache", "tracking=none", setup=("photos", "files"), expect=0))
    add(case("cache-damaged", "cache", "fvexp", "task=dataset_examples", "data.dir={tmp}/photos",
             "data.cache_dir={tmp}/cache", "tracking=none", setup=("cache_damaged",), expect=0))
    add(case("cache-too-long", "cache", "fvexp", "task=dataset_examples", "data.dir={tmp}/photos",
             "data.cache_dir={tmp}/" + "c" * 300, "tracking=none", setup=("photos",), expect={0, 2}))

    # -- data.dir oddities
    for name, folder, setup, codes in (
            ("missing", "{tmp}/nosuch", (), {2}), ("empty", "{tmp}/empty", ("files",), {2}),
            ("file", "{tmp}/afile", ("files",), {2}), ("fifo", "{tmp}/photos", ("fifo",), {0}),
            ("garbage", "{tmp}/photos", ("garbage",), {0}), ("only-garbage", "{tmp}/junk", ("only_garbage",), {2}),
            ("loop", "{tmp}/photos", ("loop",), {0}), ("dev-null", "/dev/null", (), {2})):
        add(case(f"data-{name}-examples", "data.dir", "fvexp", "task=dataset_examples", f"data.dir={folder}",
                 "tracking=none", setup=setup, expect=codes, slow=True))
    for name, folder, setup in (("fifo", "{tmp}/photos", ("fifo",)), ("loop", "{tmp}/photos", ("loop",)),
                                ("missing", "{tmp}/nosuch", ())):
        add(case(f"data-{name}-render", "data.dir", "fvexp", f"data.dir={folder}", setup=(*setup, "template"),
                 expect={2} if name == "missing" else {0}, image=None if name == "missing" else "run/image.png",
                 slow=True))
    add(case("data-unreadable", "data.dir", "fvexp", "task=dataset_examples", "data.dir={tmp}/photos",
             "tracking=none", "data.cache_dir={tmp}/cache", setup=("unreadable",), user="nobody", slow=True))
    add(case("measure-six-images", "measure", "fvexp", "data.dir={tmp}/photos", "measure.judge=lite1",
             setup=("photos", "template"), expect=0, image="run/image.png"))
    add(case("measure-queries-beyond-folder", "measure", "fvexp", "data.dir={tmp}/photos", "measure.judge=lite1",
             "measure.queries=500", "tracking=none", setup=("photos",), expect={0, 2}, slow=True))

    # -- paths: objective.image, model.weights_path, priors
    for name, path in (("missing", "{tmp}/nosuch.png"), ("folder", "{tmp}/folder"), ("dev-zero", "/dev/zero"),
                       ("truncated", "{tmp}/trunc.png"), ("text", "{tmp}/notes.db")):
        add(case(f"image-{name}", "objective.image", "fvexp", "objective=inversion", f"objective.image={path}",
                 "tracking=none", setup=("files", "truncated_png"), slow=True))
    add(case("spectrum-from-dev-zero", "cli: a key of another option (param=maco's)", "fvexp",
             "param.spectrum_from=/dev/zero", "tracking=none", slow=True))
    for name, path in (("missing", "{tmp}/nosuch.pt"), ("folder", "{tmp}/folder"), ("dev-zero", "/dev/zero"),
                       ("empty", "{tmp}/empty.pt"), ("text", "{tmp}/text.pt"), ("list", "{tmp}/list.pt"),
                       ("checkpoint", "{tmp}/checkpoint.pt"), ("whole-model", "{tmp}/whole.pt"),
                       ("wrong-keys", "{tmp}/wrong.pt"), ("truncated", "{tmp}/state.pt")):
        add(case(f"weights-{name}", "model.weights_path", "fvexp", "model=torchvision", "model.name=resnet18",
                 f"model.weights_path={path}", "objective.layer=layer1", "tracking=none",
                 setup=("files", "weights"), slow=True))
    for name, path in (("missing", "{tmp}/nosuch.pt"), ("folder", "{tmp}/folder"), ("dev-zero", "/dev/zero"),
                       ("text", "{tmp}/text.pt"), ("truncated", "{tmp}/trunc.pt"), ("version9", "{tmp}/v9.pt"),
                       ("tensors", "{tmp}/tensors.pt")):
        add(case(f"prior-penalty-{name}", "prior path", "fvexp", f"regularizers.prior.path={path}",
                 "regularizers.prior.weight=1", "tracking=none", setup=("files", "priors"), slow=True))
    for name, path in (("missing", "{tmp}/nosuch.pt"), ("version9", "{tmp}/v9.pt"), ("truncated", "{tmp}/trunc.pt")):
        add(case(f"prior-param-{name}", "prior path", "fvexp", "param=prior", f"param.path={path}", "tracking=none",
                 setup=("files", "priors"), slow=True))
    add(case("prior-param-ok", "prior path", "fvexp", "param=prior", "param.path={tmp}/prior.pt",
             setup=("priors", "template"), expect=0, image="run/image.png"))
    add(case("prior-param-wrong-size", "prior path", "fvexp", "param=prior", "param.path={tmp}/prior.pt",
             "render.size=96", "tracking=none", setup=("priors",), slow=True))

    # -- task=train_prior
    prior = ("task=train_prior", "tracking=none")
    add(case("prior-no-data", "priors", "fvexp", *prior))
    for value in ("task.steps=0", "task.crop=0", "task.crop=500", "task.batch=0", "task.noise=-1", "task.lr=0",
                  "task.width=0", "task.latent=0", "task.depth=0", "task.nosuch=1"):
        add(case(f"prior-{value}", "priors", "fvexp", *prior, "data.dir={tmp}/photos", value, setup=("photos",),
                 expect={2}, slow=value == "task.crop=500"))
    add(case("prior-train-ok", "priors", "fvexp", "task=train_prior", "data.dir={tmp}/photos", "task.steps=3",
             "task.crop=16", setup=("photos", "template"), expect=0))
    add(case("prior-train-garbage", "priors", "fvexp", *prior, "data.dir={tmp}/junk", "task.steps=3",
             setup=("only_garbage",), slow=True))
    add(case("prior-sigterm", "signals", "fvexp", "task=train_prior", "data.dir={tmp}/photos", "task.steps=100000",
             "task.crop=16", setup=("photos", "template"), signal=("SIGTERM", "", 40), expect={143, 0}))

    # -- task=atlas
    atlas = ("task=atlas", "tracking=none")
    add(case("atlas-no-data", "atlas", "fvexp", *atlas))
    for value in ("task.grid=0", "task.samples=0", "task.per_image=0", "task.min_count=0", "task.per_batch=0",
                  "task.examples=-1", "task.cossim_pow=-1", "task.grid=abc"):
        add(case(f"atlas-{value}", "atlas", "fvexp", *atlas, "data.dir={tmp}/photos", value, setup=("photos",)))
    add(case("atlas-unknown-layer", "atlas", "fvexp", *atlas, "data.dir={tmp}/photos", "objective.layer=nosuch",
             setup=("photos",), slow=True))
    add(case("atlas-grid-too-large", "atlas", "fvexp", *atlas, "data.dir={tmp}/photos", "task.grid=50",
             "task.samples=20", setup=("photos",), slow=True))
    add(case("atlas-class-filter", "atlas", "fvexp", *atlas, "data.dir={tmp}/photos", "task.class_filter=nosuchclass",
             setup=("photos",), slow=True))
    add(case("atlas-ok", "atlas", "fvexp", "task=atlas", "data.dir={tmp}/photos", "task.grid=2", "task.samples=48",
             "task.per_image=8", "task.min_count=1", "task.dir={tmp}/atlas", setup=("photos", "template"),
             expect=0, image="run/atlas.png"))

    # -- the Python API
    add(api("api-visualize-function", "fvexp.visualize(lambda x: x, 'a:1', steps=2, size=64)"))
    add(api("api-visualize-string", "fvexp.visualize('a string', '0:1', steps=2, size=64)"))
    add(api("api-visualize-objective-int", "fvexp.visualize(net, 5, steps=2, size=64)"))
    add(api("api-visualize-bad-layer", "fvexp.visualize(net, 'nosuch:1', steps=2, size=64)"))
    add(api("api-visualize-bad-channel", "fvexp.visualize(net, '0:99', steps=2, size=64)"))
    add(api("api-visualize-mean-two", "fvexp.visualize(net, '1:1', mean=[0.5, 0.5], std=[0.2, 0.2], steps=2, "
                                      "size=64)"))
    add(api("api-visualize-std-zero", "fvexp.visualize(net, '1:1', mean=[0.5]*3, std=[0, 0, 0], steps=2, size=64)"))
    add(api("api-visualize-unknown-kw", "fvexp.visualize(net, '1:1', stpes=2)"))
    add(api("api-visualize-steps-negative", "fvexp.visualize(net, '1:1', steps=-1, size=64)"))
    add(api("api-visualize-size-string", "fvexp.visualize(net, '1:1', steps=2, size='big')"))
    add(api("api-visualize-out-under-file", "fvexp.visualize(net, '1:1', steps=2, size=64, "
                                            "out_dir='{tmp}/afile/run')", setup=("files",)))
    add(api("api-visualize-track-bad", "fvexp.visualize(net, '1:1', steps=2, size=64, track='nosuch://x', "
                                       "overrides=['tracking.on_error=fail'])"))
    add(api("api-visualize-bad-override", "fvexp.visualize(net, '1:1', steps=2, size=64, "
                                          "overrides=['regularizers.tv.wieght=1'])"))
    add(api("api-visualize-ok", "fvexp.visualize(net, '1:1', steps=2, size=64, out_dir='{tmp}/run')", expect=0,
            image="run/image.png", slow=False))
    add(api("api-visualize-relative-store", "fvexp.visualize(net, '1:1', steps=2, size=64, track='sqlite:///m.db', "
                                            "out_dir='{tmp}/run')", expect=0, image="run/image.png", slow=True))
    add(api("api-run-misspelt", "fvexp.run('objective.chanel=3')"))
    add(api("api-run-multirun", "fvexp.run('-m', 'seed=0,1')"))
    add(api("api-run-range", "fvexp.run('render.steps=-5')"))
    add(api("api-run-sweep-preset", "fvexp.run('experiment=priors')"))
    add(api("api-run-bad-option", "fvexp.run('param=fouier')"))
    add(api("api-atlas-bad-layer", "fvexp.atlas(net, 'nosuch', '{tmp}/photos', steps=2, size=64, grid=2)",
            setup=("photos",)))
    add(api("api-atlas-missing-folder", "fvexp.atlas(net, '1', '{tmp}/nosuch', steps=2, size=64, grid=2)"))
    add(api("api-atlas-folder-is-file", "fvexp.atlas(net, '1', '{tmp}/afile', steps=2, size=64, grid=2)",
            setup=("files",)))
    add(api("api-atlas-grid-zero", "fvexp.atlas(net, '1', '{tmp}/photos', steps=2, size=64, grid=0)",
            setup=("photos",)))
    add(api("api-atlas-unknown-kw", "fvexp.atlas(net, '1', '{tmp}/photos', gird=2)", setup=("photos",)))

    # -- the tools
    for tool in TOOLS:
        add(case(f"{tool}-help", "tools", tool, "--help", expect=0, slow=False))
        add(case(f"{tool}-unknown-option", "tools", tool, "--nosuch", expect={1, 2}))
    stores = {"missing": "sqlite:///{tmp}/missing/s.db", "folder": "sqlite:///{tmp}/folder",
              "text": "sqlite:///{tmp}/notes.db", "half": "sqlite:///{tmp}/half.db", "scheme": "nosuch://x",
              "truncated": "sqlite:///{tmp}/trunc.db"}
    tool_error = {1, 2}  # the tools exit 1 for a store or run they cannot use, 2 for a bad argument (argparse)
    for tool in ("fvexp-compare", "fvexp-claims", "fvexp-orphans"):
        for name, store in stores.items():
            out_dir = ("--out", "{tmp}/out") if tool != "fvexp-orphans" else ()
            add(case(f"{tool}-store-{name}", "tools: stores", tool, "--store", store, *out_dir,
                     setup=("files", "half", "truncated_store"), expect=tool_error))
    for name in ("missing", "half", "text"):
        add(case(f"fvexp-reproduce-store-{name}", "tools: stores", "fvexp-reproduce", "0123abcd", "--store",
                 stores[name], setup=("files", "half"), expect=tool_error))
    add(case("fvexp-compare-bad-run-id", "tools: run ids", "fvexp-compare", "nosuchrun", "--store",
             "sqlite:///{tmp}/s.db", "--out", "{tmp}/out", setup=("store",), expect=tool_error))
    add(case("fvexp-compare-empty-store", "tools: run ids", "fvexp-compare", "--store", "sqlite:///{tmp}/s.db",
             "--out", "{tmp}/out", setup=("store",), expect={1, 2}))
    add(case("fvexp-reproduce-bad-run-id", "tools: run ids", "fvexp-reproduce", "nosuchrun", "--store",
             "sqlite:///{tmp}/s.db", setup=("store",), expect=tool_error))
    add(case("fvexp-reproduce-threads-0", "tools: run ids", "fvexp-reproduce", "nosuchrun", "--threads", "0",
             "--store", "sqlite:///{tmp}/s.db", setup=("store",), expect=tool_error))
    add(case("fvexp-reproduce-no-id", "tools: run ids", "fvexp-reproduce", expect=tool_error))
    add(case("fvexp-orphans-empty", "tools: run ids", "fvexp-orphans", "--store", "sqlite:///{tmp}/s.db",
             setup=("store",), expect=0))
    add(case("fvexp-orphans-mark-empty", "tools: run ids", "fvexp-orphans", "--store", "sqlite:///{tmp}/s.db",
             "--mark", setup=("store",), expect=0))
    add(case("fvexp-claims-empty-store", "tools: run ids", "fvexp-claims", "--store", "sqlite:///{tmp}/s.db",
             "--out", "{tmp}/out", setup=("store",), expect={0, 1, 2}))
    add(case("fvexp-layers-misspelt", "tools", "fvexp-layers", "objective.chanel=3", expect=tool_error))
    add(case("fvexp-layers-bad-model", "tools", "fvexp-layers", "model=torchvison", expect=tool_error))
    add(case("fvexp-layers-bad-value", "tools", "fvexp-layers", "render.size=0", expect=tool_error))
    add(case("fvexp-layers-ok", "tools", "fvexp-layers", "render.size=64", expect=0))
    add(case("fvexp-server-mysql", "tools", "fvexp-server", "--backend-store-uri", "mysql://u@127.0.0.1:9/db",
             "--artifacts-destination", "{tmp}/art", "--port", "9", expect=tool_error))
    add(case("fvexp-server-no-artifacts", "tools", "fvexp-server", "--backend-store-uri", "sqlite:///{tmp}/s.db",
             expect=tool_error))
    add(case("fvexp-server-bad-port", "tools", "fvexp-server", "--backend-store-uri", "sqlite:///{tmp}/s.db",
             "--artifacts-destination", "{tmp}/art", "--port", "notaport", expect=tool_error))
    add(case("fvexp-server-scheme", "tools", "fvexp-server", "--backend-store-uri", "nosuch://x",
             "--artifacts-destination", "{tmp}/art", "--port", "9", expect=tool_error))
    add(case("fvexp-demo-side-0", "tools", "fvexp-demo", "--side", "0", "{tmp}/demo", expect=tool_error))
    add(case("fvexp-demo-side-x", "tools", "fvexp-demo", "--side", "x", "{tmp}/demo", expect=tool_error))
    add(case("fvexp-demo-into-file", "tools", "fvexp-demo", "{tmp}/afile", setup=("files",), expect=tool_error))

    # -- sweeps
    for launcher in ("basic", "joblib"):
        for tracking in ("tracking=none", "tracking.uri=sqlite:///{tmp}/s.db"):
            add(case(f"sweep-{launcher}-{tracking.split('=')[0].split('.')[-1]}-one-fails", "sweeps", "fvexp", "-m",
                     f"hydra/launcher={launcher}", tracking, "objective.channel=3,100000", setup=("store",),
                     image="sweep/0_*/image.png"))
    add(case("sweep-range-error", "sweeps", "fvexp", "-m", "render.steps=2,-5", "tracking=none"))
    add(case("sweep-unknown-key", "sweeps", "fvexp", "-m", "render.stpes=2,3", "tracking=none"))
    add(case("sweep-ok", "sweeps", "fvexp", "-m", "seed=0,1", setup=("template",), expect=0,
             image="sweep/1_*/image.png"))

    # -- signals (sent once the first step's image is written, or after the wait)
    long = ("render.steps=400", "render.thresholds=[1,400]")
    first = "run/steps/*"
    add(case("sigterm-render", "signals", "fvexp", *long, setup=("template",), signal=("SIGTERM", first, 60),
             expect=143, image="run/image.png"))
    add(case("sigint-render", "signals", "fvexp", *long, setup=("template",), signal=("SIGINT", first, 60),
             group=True, expect=130, image="run/image.png"))
    add(case("sigterm-render-untracked", "signals", "fvexp", *long, "tracking=none", signal=("SIGTERM", first, 60),
             expect=143, image="run/image.png"))
    add(case("sigterm-render-dead-server", "signals", "fvexp", *long, "tracking.uri=http://127.0.0.1:9",
             signal=("SIGTERM", first, 60), expect=143, image="run/image.png"))
    add(case("sigkill-render-then-orphans", "signals", "fvexp", *long, setup=("template",),
             signal=("SIGKILL", first, 60), expect=0,
             then=["fvexp-orphans", "--store", "sqlite:///{tmp}/outputs/mlflow.db", "--mark"]))
    gallery = ("task=gallery", "task.channels=[0,1,2,3,4,5]", "task.per_batch=1", "render.steps=60",
               "task.dir={tmp}/gallery")
    add(case("sigterm-gallery", "signals", "fvexp", *gallery, setup=("template",),
             signal=("SIGTERM", "gallery/**/*.png", 90), expect=143))
    add(case("sigint-gallery", "signals", "fvexp", *gallery, setup=("template",),
             signal=("SIGINT", "gallery/**/*.png", 90), group=True, expect=130))
    sweep = ("-m", "seed=0,1,2", *long)
    add(case("sigterm-sweep-basic", "signals", "fvexp", *sweep, setup=("template",),
             signal=("SIGTERM", "sweep/0_*/steps/*", 90), expect=143, image="sweep/0_*/image.png"))
    add(case("sigterm-sweep-joblib", "signals", "fvexp", *sweep, "hydra/launcher=joblib", setup=("template",),
             signal=("SIGTERM", "sweep/*/steps/*", 120), expect=143))
    add(case("sigint-sweep-joblib", "signals", "fvexp", *sweep, "hydra/launcher=joblib", setup=("template",),
             signal=("SIGINT", "sweep/*/steps/*", 120), group=True, expect=130))
    return out


# ----------------------------------------------------------------------------------------------- runner

def command_line(words: list[str], tmp: Path, python: str) -> list[str]:
    words = [w.replace("{tmp}", str(tmp)) for w in words]
    head, rest = words[0], words[1:]
    if head == "py":
        return [python, "-c", rest[0]]
    if head == "fvexp":
        keys = {w.split("=", 1)[0].lstrip("+~") for w in rest}
        base = [b.replace("{tmp}", str(tmp)) for b in BASE if b.split("=", 1)[0] not in keys]
        if "--help" in rest or "--nosuch" in rest:
            base = []
        return [python, "-m", "fvexp", *rest, *base]
    return [python, "-m", f"fvexp.tools.{TOOLS[head]}", *rest]


def running_runs(tmp: Path) -> int:
    """Runs left RUNNING in any SQLite store of the case's folder (every process of the case has ended)."""
    count = 0
    for path in tmp.rglob("*.db"):
        with contextlib.suppress(Exception), contextlib.closing(
                sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
            count += db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    return count


def wait_for(pattern: str, tmp: Path, limit: float, process: subprocess.Popen) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and process.poll() is None:
        if pattern and any(tmp.glob(pattern)):
            time.sleep(1.0)  # a little into the optimization
            return
        time.sleep(0.3)


def run_one(c: Case, code: Path, round_: str) -> dict:
    tmp = WORK / round_ / re.sub(r"[^\w.-]", "_", c.id)  # no '=' or brackets: the folder goes into overrides
    if tmp.exists():
        subprocess.run(["umount", "-l", *map(str, [p for p in tmp.rglob("*") if p.is_mount()])], check=False,
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1", **c.env}
    env.pop("MLFLOW_TRACKING_URI", None)
    python = str(ROOT / ".venv" / "bin" / "python")
    record: dict = {"id": c.id, "surface": c.surface, "expect": sorted(c.expect)}
    try:
        for name in c.setup:
            SETUPS[name](tmp)
    except Exception as error:  # a setup that fails is reported, not fatal to the campaign
        record.update(exit=None, traceback=False, hang=False, last=f"setup failed: {error}", lost=False, running=0)
        return record
    argv = command_line(c.command, tmp, python)
    if c.user:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
    started = time.monotonic()
    limit = c.timeout or (SLOW_TIMEOUT if c.slow else FAST_TIMEOUT)
    with open(tmp / "stdout.txt", "wb") as out, open(tmp / "stderr.txt", "wb") as err:
        process = subprocess.Popen(argv, cwd=tmp, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        if c.signal:
            name, pattern, wait = c.signal
            wait_for(pattern, tmp, wait, process)
            number = getattr(signal, name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, number) if c.group else process.send_signal(number)
            record["signalled_after_s"] = round(time.monotonic() - started, 1)
        hang = False
        try:
            rc = process.wait(timeout=max(1, limit - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            hang, rc = True, None
        time.sleep(0.5)
        try:
            os.killpg(process.pid, 0)
            record["stray_processes"] = True  # something of the case outlived its main process
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    elapsed = time.monotonic() - started
    stdout = (tmp / "stdout.txt").read_text(errors="replace")
    stderr = (tmp / "stderr.txt").read_text(errors="replace")
    if c.then:
        follow = subprocess.run(command_line(c.then, tmp, python), cwd=tmp, env=env, capture_output=True, text=True,
                                timeout=FAST_TIMEOUT)
        stdout += follow.stdout
        stderr += follow.stderr
        rc = follow.returncode
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:  # nothing on stderr: what stdout ended with (an image's path, a folder written)
        lines = [f"stdout: {line}" for line in stdout.splitlines() if line.strip()][-1:]
    record.update(
        exit=rc, hang=hang, seconds=round(elapsed, 1),
        traceback="Traceback (most recent call last)" in stdout + stderr,
        last=(lines[-1] if lines else "").replace(str(tmp), "{tmp}")[:400],
        stderr_lines=len(lines),
        lost=bool(c.image) and not any(tmp.glob(c.image)),
        running=running_runs(tmp),
        command=shlex.join(c.command),
    )
    mounts = [p for p in tmp.rglob("*") if p.is_mount()]
    if mounts:
        subprocess.run(["umount", "-l", *map(str, mounts)], check=False, capture_output=True)
    return record


def prepare() -> None:
    """Photos, an empty MLflow store and a trained prior, made once with the current tree."""
    SHARED.mkdir(parents=True, exist_ok=True)
    python = str(ROOT / ".venv" / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not (SHARED / "photos").is_dir():
        code = ("import skimage.data as d, PIL.Image as I, sys\n"
                "for n in ['astronaut','chelsea','coffee','rocket','hubble_deep_field','immunohistochemistry']:\n"
                "    I.fromarray(getattr(d, n)()).convert('RGB').resize((96, 96)).save(f'{sys.argv[1]}/{n}.png')")
        (SHARED / "photos").mkdir()
        subprocess.run([python, "-c", code, str(SHARED / "photos")], check=True)
    if not (SHARED / "template.db").is_file():
        subprocess.run([python, "-c", "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments()",
                        f"sqlite:///{SHARED / 'template.db'}"], check=True, env=env, capture_output=True)
    if not (SHARED / "prior.pt").is_file():
        done = subprocess.run([python, "-m", "fvexp", "task=train_prior", f"data.dir={SHARED / 'photos'}",
                               "task.steps=3", "task.crop=16", "tracking=none", "progress=false", "data.workers=0",
                               "data.size=64", f"hydra.run.dir={SHARED / 'prior_run'}"], cwd=SHARED, env=env,
                              capture_output=True, text=True, check=True)
        shutil.copy(done.stdout.strip().splitlines()[-1], SHARED / "prior.pt")


def campaign(round_: str, code: Path, deadline: datetime | None, only: set[str] | None, quick_only: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"fault_campaign-{round_}.json"
    done = {r["id"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    def rank(c: Case) -> tuple[bool, int]:
        surface = c.surface.split(" (")[0].split(":")[0]
        return c.slow, (c.slow or round_ == "before") and PRIORITY.index(surface)
    todo = sorted(cases(), key=rank)
    for c in todo:
        if c.id in done or (only and c.id not in only) or (quick_only and c.slow):
            continue
        if deadline and datetime.now(UTC) >= deadline:
            print(f"deadline reached; {sum(1 for x in todo if x.id not in done)} cases not run", flush=True)
            break
        record = run_one(c, code, round_)
        done[c.id] = record
        path.write_text(json.dumps(list(done.values()), indent=1))
        flags = [f for f in ("traceback", "hang", "lost") if record.get(f)] + (["RUNNING"] if record.get("running")
                                                                               else [])
        print(f"{c.id}: exit {record['exit']} {record.get('seconds')} s {' '.join(flags)} | {record['last'][:120]}",
              flush=True)


# ------------------------------------------------------------------------------------------------ table

def _cell(r: dict | None, expect: frozenset[int]) -> str:
    if r is None:
        return "not run"
    r = {**r, "expect": sorted(expect)}  # the case's expectation as defined now
    flags = [name for name, key in (("**TRACEBACK**", "traceback"), ("**HANG**", "hang"), ("**LOST IMAGE**", "lost"))
             if r.get(key)] + ([f"**{r['running']} RUNNING**"] if r.get("running") else [])
    if r.get("exit") is not None and r["exit"] not in r["expect"]:
        flags.append(f"(expected {'/'.join(map(str, r['expect']))})")
    last = re.sub(r"\s+", " ", r.get("last", "")).replace("|", "\\|").replace("`", "'")
    last = last if len(last) <= 110 else last[:107] + "..."
    return f"{r.get('exit')} {' '.join(flags)}<br>`{last}`" if last else f"{r.get('exit')} {' '.join(flags)}"


def _summary(results: dict[str, dict], expect: dict[str, frozenset[int]]) -> str:
    results = {key: {**r, "expect": expect[key]} for key, r in results.items() if key in expect}
    n = len(results)
    counts = {key: sum(1 for r in results.values() if r.get(key)) for key in ("traceback", "hang", "lost", "running")}
    unexpected = sum(1 for r in results.values() if r.get("exit") is not None and r["exit"] not in r["expect"])
    return (f"{n} cases: {counts['traceback']} tracebacks, {counts['hang']} hangs, {counts['lost']} lost images, "
            f"{counts['running']} with runs left RUNNING, {unexpected} with an exit code other than expected")


def table(doc: Path) -> None:
    before, after = ({r["id"]: r for r in json.loads((RESULTS / f"fault_campaign-{name}.json").read_text())}
                     if (RESULTS / f"fault_campaign-{name}.json").is_file() else {} for name in ("before", "after"))
    listed = [c for c in cases() if c.id in after or c.id in before]
    expect = {c.id: c.expect for c in listed}
    heading = f"## Campaign, round two ({len(listed)} cases)"
    lines = [heading, "",
             "Made by `benchmarks/fault_campaign.py` (issue 22): each case alone, in its own temporary folder with "
             "its own MLflow store, with tiny settings (`" + " ".join(BASE) + "` unless the case sets the key). "
             "*Before* is the tree at the session's start (`git archive HEAD`), *after* the working tree:", "",
             "    .venv/bin/python benchmarks/fault_campaign.py --round after --code /work/main",
             "    .venv/bin/python benchmarks/fault_campaign.py --round before --code /tmp/campaign-old",
             "    .venv/bin/python benchmarks/fault_campaign.py --doc docs/reliability.md", "",
             "Each cell: the exit code, then **TRACEBACK** (one in stdout or stderr), **HANG** (past the case's time "
             "limit), **LOST IMAGE** (the image the run should have kept is missing), **N RUNNING** (runs left "
             "RUNNING in the case's store after all its processes ended), *(expected …)* when the exit code is not "
             "the one the case expects; then the last line of stderr (temporary folder shown as `{tmp}`).", "",
             f"- before: {_summary(before, expect) if before else 'not run'}",
             f"- after: {_summary(after, expect)}"]
    both = set(before) & set(after)
    if before and len(both) < len(after):
        old, new = ({k: r[k] for k in both} for r in (before, after))
        lines.append(f"- the {len(both)} cases run in both rounds: before {_summary(old, expect)}; "
                     f"after {_summary(new, expect)}")
    lines.append("")
    if len(before) < len(listed):
        lines += [f"Only {len(before)} of the {len(listed)} cases were run on the *before* tree (time ran out): "
                  "quick cases first, in the order of `PRIORITY`; the others say *not run*.", ""]
    remaining = [c.id for c in listed if c.id in after and (
        any(after[c.id].get(k) for k in ("traceback", "hang", "lost", "running"))
        or after[c.id].get("exit") not in c.expect)]
    if remaining:
        lines += [f"*After* still shows a traceback, a RUNNING run or an unexpected exit code in: "
                  f"{', '.join(remaining)}.", ""]
    lines += ["| case | surface | command | before | after |", "|---|---|---|---|---|"]
    for c in listed:
        command = shlex.join(c.command) if c.command[0] != "py" else "python: " + c.command[1].split("r = ", 1)[1]\
            .split("\n")[0]
        command = command.replace("|", "\\|").replace("`", "'")
        if len(command) > 140:
            command = command[:137] + "..."
        lines.append(f"| {c.id} | {c.surface} | `{command}` | {_cell(before.get(c.id), c.expect)} | "
                     f"{_cell(after.get(c.id), c.expect)} |")
    text = doc.read_text()
    start = text.find("## Campaign, round two (")
    if start >= 0:
        text = text[:start].rstrip("\n") + "\n"
    doc.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round", choices=["before", "after"])
    parser.add_argument("--code", type=Path, help="the tree whose fvexp is run (PYTHONPATH)")
    parser.add_argument("--deadline", help="UTC time HH:MM after which no new case starts")
    parser.add_argument("--only", nargs="*", help="case ids")
    parser.add_argument("--quick-only", action="store_true", help="skip the cases that load the model")
    parser.add_argument("--list", action="store_true", help="print the cases and their count")
    parser.add_argument("--doc", type=Path, help="write the table as the final section of this file")
    args = parser.parse_args()
    if args.list:
        all_cases = cases()
        for c in all_cases:
            print(c.id, c.surface, "slow" if c.slow else "", shlex.join(c.command)[:100])
        print(len(all_cases), "cases,", sum(c.slow for c in all_cases), "slow")
        return
    if args.round:
        prepare()
        deadline = None
        if args.deadline:
            hour, minute = map(int, args.deadline.split(":"))
            deadline = datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
        campaign(args.round, args.code.resolve(), deadline, set(args.only or ()) or None, args.quick_only)
    if args.doc:
        table(args.doc)


if __name__ == "__main__":
    main()
