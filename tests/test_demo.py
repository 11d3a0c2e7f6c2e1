"""fvexp-demo: real, distinct photos from installed wheels only, labelled, and a --help that builds nothing."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fvexp.tools.demo import main
from tests.conftest import ROOT

# Run in a child process: only the distributions pyproject.toml's [project] dependencies pull in
# (at any depth) may be imported or located; anything else (the dev extra's, a test's) is refused.
ONLY_THE_WHEELS_DEPENDENCIES = textwrap.dedent("""
    import importlib.metadata as md, sys, tomllib
    from importlib.abc import MetaPathFinder
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon

    def closure(names):
        seen, todo = set(), [canon(n) for n in names]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                requires = md.requires(name) or []
            except md.PackageNotFoundError:
                continue
            todo += [canon(Requirement(r).name) for r in requires
                     if not Requirement(r).marker or Requirement(r).marker.evaluate({"extra": ""})]
        return seen

    declared = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
    allowed = closure(Requirement(d).name for d in declared) | {"fvexp"}
    refused = {top for top, dists in md.packages_distributions().items()
               if not {canon(d) for d in dists} & allowed}

    class Refuse(MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in refused:
                raise ModuleNotFoundError(f"{fullname} is not among the wheel's dependencies", name=fullname)
            return None

    sys.meta_path.insert(0, Refuse())
    from fvexp.tools.demo import main
    main([sys.argv[2]])
""")


@pytest.mark.slow  # the whole folder: 267 photos decoded, resized and labelled by Lite2 (about 25 s)
def test_fvexp_demo_builds_the_whole_folder_from_the_wheels_own_dependencies(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-c", ONLY_THE_WHEELS_DEPENDENCIES, str(ROOT / "pyproject.toml"),
                           str(folder)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"267 photos in {folder}/")
    with open(folder / "labels.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert Counter(r["source"] for r in rows) == {"classification": 100, "street": 100, "cats": 30, "imagenet": 20,
                                                 "skimage": 17}
    assert sorted(r["file"] for r in rows) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert not any("segmented" in r["file"] for r in rows)
    known = [r for r in rows if r["kind"] == "imagenet"]
    assert len(known) == 20 and {r["label"] for r in known} >= {"243", "559", "990"}  # foolbox's names say them
    assert all(r["kind"].startswith("pseudo") for r in rows if r["source"] != "imagenet")
    cats = [r["class"] for r in rows if r["source"] == "cats" and 281 <= int(r["label"]) <= 285]  # tabby … Egyptian
    assert len(cats) >= 12, cats  # Lite2 names a domestic cat in 14 of the 30 cat photos (the others: the scene)
    sizes = [Image.open(folder / r["file"]).size for r in rows]
    assert max(min(s) for s in sizes) == 256  # resized once, short side 256 (smaller photos kept as they are)


def test_help_prints_usage_and_builds_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: fvexp-demo [-h]")
    assert list(tmp_path.iterdir()) == []


def test_crops_come_only_with_the_flag(tmp_path: Path) -> None:
    from fvexp.tools.demo import build, photos

    dog = [p for p in photos() if p.name == "imagenet_00"]  # labelled by its file name: no network needed
    build(tmp_path / "whole", dog)
    build(tmp_path / "cropped", dog, with_crops=True)
    assert sorted(p.relative_to(tmp_path / "whole").as_posix() for p in (tmp_path / "whole").rglob("*.jpg")) == [
        "imagenet/imagenet_00.jpg"]
    assert len(list((tmp_path / "cropped" / "crops" / "imagenet_00").glob("*.jpg"))) == 13
    assert Image.open(tmp_path / "whole" / "imagenet" / "imagenet_00.jpg").size == (256, 256)  # 512 px, written at 256
