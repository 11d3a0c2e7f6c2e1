"""Shared fixtures: the real EfficientNet-Lite0, natural photos, and a way to run the fvexp CLI."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra._internal.hydra import Hydra  # one instance for the session: hydra-core is pinned
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from fvexp.app.schema import register
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.models import efficientnet_lite

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (the README's test command does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fast_tests_start_no_fvexp_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast suite stays fast: a test that starts an fvexp process must be marked slow."""
    if request.node.get_closest_marker("slow"):
        return
    original = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        words = [str(a) for a in args] if isinstance(args, list | tuple) else [str(args)]
        if any(w == "fvexp" or w.startswith("fvexp.") or w.endswith("/fvexp") for w in words):
            raise AssertionError(f"{request.node.name} starts an fvexp process ({' '.join(words)}): mark it slow")
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture
def ray_dir() -> Iterator[Path]:
    """Ray's temp folder for one test: short, as Ray's sockets live in it, and named in its processes' arguments."""
    folder = Path(tempfile.mkdtemp(prefix="fvexp-ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


CHROMIUM = shutil.which("chromium")  # Debian's; .ci/run installs it, Playwright drives it (nothing downloads)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


@contextlib.contextmanager
def chromium_page(page: Path) -> Iterator[Any]:
    """An HTML file open in headless Chromium (a Playwright page), once it and every image on it have loaded."""
    if CHROMIUM is None:
        pytest.skip("no Chromium installed to look at the page (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            shown = browser.new_page(viewport={"width": 1200, "height": 900})
            shown.goto(page.as_uri(), wait_until="load")
            yield shown
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GROUPS = {"model", "objective", "param", "transforms", "optimizer", "tracking", "task", "experiment", "ablation"}


def make(*overrides: str) -> DictConfig:
    """The command line's config composed with `overrides`, in this process.

    Composing costs a third of a second, so the choice of options is composed once and the values
    are set on a copy, as Hydra sets them; anything that does not apply that way (a misspelt key,
    `+key=`) is composed by Hydra itself, so that its errors are the ones a user sees.
    """
    choices = tuple(o for o in overrides if o.split("=", 1)[0] in GROUPS)
    try:
        cfg = copy.deepcopy(composed(choices))
        for override in OverridesParser.create().parse_overrides([o for o in overrides if o not in choices]):
            if override.is_add() or override.is_delete() or override.is_force_add():
                raise ValueError(override)
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        return cfg
    except Exception:
        return copy.deepcopy(composed(overrides))


@functools.cache
def composed(overrides: tuple[str, ...]) -> DictConfig:
    """What `hydra.compose` gives, from one Hydra kept for the session (initializing one per call costs 0.1 s)."""
    cfg = session_hydra().compose_config("config", list(overrides), run_mode=RunMode.RUN,
                                         with_log_configuration=False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@functools.cache
def session_hydra() -> Hydra:
    register()
    hydra = Hydra.create_main_hydra2("fvexp", create_config_search_path(str(ROOT / "conf")))
    GlobalHydra.instance().clear()  # it composes on its own; fvexp.run and the tools initialize their own
    return hydra


@pytest.fixture(scope="session")
def model() -> FeatureModel:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return efficientnet_lite()


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    """scikit-image's sample photos (shipped offline) at 224 px, in [0, 1]."""
    import skimage.data

    images = [torch.tensor(getattr(skimage.data, name)()[..., :3]).permute(2, 0, 1)[None] for name in PHOTOS]
    return torch.cat([F.interpolate(i.float() / 255, size=(224, 224), mode="bilinear", antialias=True)
                      for i in images])


def fvexp(*args: str, cwd: Path, env: dict[str, str] | None = None,
          timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m fvexp ARGS` in `cwd` the way a user would, capturing its output."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "fvexp", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every third photo of `fvexp-demo`'s folder and scikit-image's cat (90 distinct photos from all five
    sources, one sub-folder per source, with labels.csv), as `fvexp-demo` writes them."""
    from fvexp.tools.demo import build, photos

    folder = tmp_path_factory.mktemp("demo_photos")
    build(folder, [p for i, p in enumerate(photos()) if i % 3 == 0 or p.name == "chelsea"])
    return folder


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder on a tmpfs of `request.param` bytes ("40k"), to fill up; only root may mount one (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
