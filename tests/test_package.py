"""The package: layers that import only downward, one source for every default, configs inside the wheel."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fvexp.app.places import config_dir
from fvexp.app.schema import option_schema, options
from fvexp.app.signatures import parameters
from tests.conftest import ROOT, fvexp, make

PACKAGE = ROOT / "fvexp"
# Each layer and the layers it may import (fvexp.errors is shared by all; fvexp.conf holds no code).
MAY_IMPORT = {
    "optvis": {"optvis"},
    "app": {"optvis", "app"},
    "tracking": {"optvis", "app", "tracking"},
    "tools": {"optvis", "app", "tracking", "tools"},
}


def imports() -> dict[str, set[str]]:
    """Every fvexp module and the fvexp modules it imports, at any depth of its code."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fvexp"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}".replace(".", "/") in modules_on_disk()
                          else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("fvexp")}
        graph[module] = found
    return graph


def modules_on_disk() -> set[str]:
    return {str(p.relative_to(ROOT).with_suffix("")) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = [f"{m} imports {i}" for m, found in imports().items() if layer(m)
             for i in found if layer(i) and layer(i) not in MAY_IMPORT[layer(m)]]
    assert wrong == []


# The library's analysis modules (what a run is measured and shown with) beside its optimization core.
ANALYSIS = {f"fvexp.optvis.{name}" for name in ("examples", "sanity", "interpretability", "atlas", "metrics", "plots")}


def test_the_optimization_core_imports_none_of_the_analysis_modules() -> None:
    """The analysis modules build on the core, never the reverse: the core is usable, and testable, alone.

    They stay in `fvexp.optvis` rather than a package of their own because runs record
    `measure._target_: fvexp.optvis.interpretability.Measures`; this test keeps the boundary a package would.
    """
    core = {m: found for m, found in imports().items() if m.startswith("fvexp.optvis") and m not in ANALYSIS}
    assert [f"{m} imports {i}" for m, found in core.items() if m != "fvexp.optvis" for i in found & ANALYSIS] == []


def test_no_import_circles() -> None:
    graph = imports()
    graph.pop("fvexp")  # the package's lazy attributes are not imports of its modules
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, set()) - {module}):
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif target in graph and target not in done:
                visit(target, [*path, target])
        done.add(module)

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_the_library_imports_neither_hydra_omegaconf_nor_mlflow() -> None:
    code = ("import sys, fvexp.optvis, fvexp.optvis.examples, fvexp.optvis.sanity; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'mlflow'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def empty_container(value: ast.expr | None) -> bool:
    if isinstance(value, ast.List | ast.Set):
        return not value.elts
    if isinstance(value, ast.Dict):
        return not value.keys
    return isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("list", "dict", "set")


def test_no_module_keeps_results_in_module_level_containers() -> None:
    """Results travel in return values and files, not in module-level lists or dicts that jobs fill."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in PACKAGE.rglob("*.py")
             for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.AnnAssign | ast.Assign) and empty_container(node.value)]
    assert found == []


@pytest.mark.parametrize("group,name,node", list(options([config_dir()])))
def test_every_default_is_the_librarys_own(group: str, name: str, node: dict) -> None:
    """A schema read from a signature has exactly the defaults Python's own `inspect` sees."""
    fields = {f.name: f for f in dataclasses.fields(option_schema(group, name, node))}
    target = fields["_target_"].default
    module, _, attribute = target.rpartition(".")
    if not target.startswith("fvexp."):
        return  # torch's optimizers (read from adam()/sgd(), checked below)
    signature = inspect.signature(getattr(importlib.import_module(module), attribute))
    for parameter in signature.parameters.values():
        if parameter.name not in fields or parameter.name == "pieces":  # configs name the pieces: a mapping
            continue
        field = fields[parameter.name]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        expected = "???" if parameter.default is inspect.Parameter.empty else parameter.default
        assert default == (list(expected) if isinstance(expected, tuple) else expected), parameter.name
    assert {p.name for p in parameters(target)} >= set(fields) - {"_target_", "_partial_", "_convert_", "weight",
                                                                   "init", "image", "name"}


def test_the_drifted_defaults_are_the_signatures_now() -> None:
    from fvexp.optvis.models import custom
    from fvexp.optvis.optimizers import adam

    assert make("model=custom").model.min_size == inspect.signature(custom).parameters["min_size"].default
    assert make("model=torchvision").model.logits_layer == ""  # "": the last linear layer, found
    cfg = make()
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optimizer.lr == inspect.signature(adam).parameters["lr"].default


@pytest.mark.slow
def test_vgg16_finds_its_logits_layer_from_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "fvexp-layers"), "model=torchvision", "model.name=vgg16",
                           "model.weights=null", "render.size=64"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "logits layer: classifier.6" in done.stdout.splitlines()[0]
    done = fvexp("model=torchvision", "model.name=vgg16", "model.weights=null", "objective=class_logit",
                 "objective.label=3", "render.steps=1", "render.size=32", "tracking=none", "progress=false",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "image.png").exists()


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_runs_from_an_empty_folder(tmp_path: Path) -> None:
    """Built, installed where the checkout is not on the path, and run as a user would run it."""
    source = tmp_path / "source"  # a copy of the working tree, so that the build leaves nothing in the checkout
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, text=True,
                            capture_output=True, check=True).stdout.splitlines()
    for name in filter(lambda name: (ROOT / name).is_file(), listed):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    wheel = next(wheels.glob("fvexp-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import fvexp.app.places as p; print(p.__file__, p.config_dir())"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert [Path(w).is_relative_to(site) for w in where] == [True, True]
    page = subprocess.run([sys.executable, "-c", "from pathlib import Path; from fvexp.app.pages import write_page; "
                           "print(write_page(Path('page.html'), 'compare.html', title='t', pictures=[], "
                           "header=['arm'], rows=[['tv']]).read_text())"], cwd=empty, env=env, capture_output=True,
                          text=True)
    assert "<td>tv</td>" in page.stdout, page.stderr[-3000:]  # the pages' templates travel in the wheel
    done = subprocess.run([str(site / "bin" / "fvexp"), "render.steps=2", "render.size=64", "progress=false"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    image = Path(done.stdout.strip().splitlines()[-1])
    assert image.name == "image.png" and image.is_relative_to(empty) and image.exists()
    assert (empty / "outputs" / "mlflow.db").exists()
    mine = tmp_path / "my_conf" / "objective"
    mine.mkdir(parents=True)
    (mine / "my_unit.yaml").write_text("defaults:\n  - channel\n  - _self_\n\nlayer: _blocks.10\nchannel: 3\n")
    done = subprocess.run([str(site / "bin" / "fvexp"), "--config-dir", str(mine.parent), "objective=my_unit",
                           "--cfg", "job", "--package", "objective"],
                          cwd=empty, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert OmegaConf.create(done.stdout).channel == 3
