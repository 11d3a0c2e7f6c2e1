"""Sweeps as parent runs, `fvexp.tools.compare` contact sheets, `fvexp.tools.reproduce` bitwise, the MLflow UI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from tests.conftest import ROOT, fvexp

pytestmark = pytest.mark.slow


def module(name: str, *args: str, cwd: Path, store: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store}
    return subprocess.run([sys.executable, "-m", f"fvexp.tools.{name}", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    """A 4-job joblib sweep in a fresh store: (folder, store URI)."""
    folder = tmp_path_factory.mktemp("sweep")
    store = f"sqlite:///{folder / 'store.db'}"
    done = fvexp("-m", "param=pixel,fourier", "transforms=none,standard", "render.steps=8", "render.size=64",
                 "hydra/launcher=joblib", "threads=1", "progress=false", cwd=folder,
                 env={"MLFLOW_TRACKING_URI": store})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, store


def all_runs(store: str) -> list:
    client = mlflow.MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def test_a_joblib_sweep_is_one_parent_with_four_children(sweep) -> None:
    _, store = sweep
    runs = all_runs(store)
    parents = [r for r in runs if r.data.tags.get("fvexp.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED" and parent.data.params["param"] == "pixel,fourier"
    assert (parent.data.tags["fvexp.jobs.finished"], parent.data.tags["fvexp.jobs.failed"]) == ("4", "0")
    assert {c.data.tags["fvexp.sweep"] for c in children} == {parent.data.tags["fvexp.sweep"]}
    client = mlflow.MlflowClient(store)
    assert "multirun.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    record = {a.path for a in client.list_artifacts(children[0].info.run_id, "environment")}
    assert "environment/pip-freeze.txt" in record
    tags = children[0].data.tags
    for tag in ("git.commit", "python.version", "numpy.version", "mlflow.version", "torch.threads", "weights.sha256",
                "torch.deterministic_algorithms"):
        assert tag in tags, tag
    assert tags["torch.threads"] == "1" and len(tags["weights.sha256"]) == 64


def test_compare_writes_a_labelled_two_by_two_sheet_and_tables(sweep) -> None:
    folder, store = sweep
    done = module("compare", "--out", str(folder / "compare"), cwd=folder, store=store)
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.split()]
    assert [p.name for p in paths] == ["contact_sheet.png", "runs.csv", "runs.md", "index.html"]
    sheet = Image.open(paths[0])
    assert 2 * 192 < sheet.width < 3 * 192 and 2 * 192 < sheet.height < 3 * 192  # 2 columns, 2 rows
    rows = list(csv.DictReader(paths[1].open()))
    assert len(rows) == 4 and {r["param"] for r in rows} == {"pixel", "fourier"}
    assert {r["transforms"] for r in rows} == {"none", "standard"} and all(r["status"] == "FINISHED" for r in rows)
    assert paths[2].read_text().startswith("| run_id | name | status | param | transforms | ")
    html = paths[3].read_text()
    assert html.count("data:image/png;base64,") == 1 and html.count("<tr>") == 5
    parent = next(r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "parent")
    logged = {a.path for a in mlflow.MlflowClient(store).list_artifacts(parent.info.run_id, "compare")}
    assert logged == {f"compare/{p.name}" for p in paths}
    done = module("compare", "--rows", "seed", cwd=folder, store=store)
    assert done.returncode == 1
    assert "--rows 'seed' does not vary in these runs; varying: param, transforms" in done.stderr


def test_reproduce_is_bitwise_and_names_what_changed(sweep) -> None:
    folder, store = sweep
    child = next(r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "job")
    done = module("reproduce", child.info.run_id, cwd=folder, store=store)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("identical (max |Δ| = 0)")
    copies = [r for r in all_runs(store) if r.data.tags.get("fvexp.reproduces") == child.info.run_id]
    assert len(copies) == 1 and copies[0].info.status == "FINISHED"
    done = module("reproduce", child.info.run_id, "--threads", "2", cwd=folder, store=store)
    assert "torch.threads: 1 → 2" in done.stdout


def test_reproduce_names_a_changed_library_version(sweep, monkeypatch) -> None:
    from fvexp.app import environment
    from fvexp.tools import reproduce

    folder, store = sweep
    child = next(r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "job")
    real = environment.package_version
    monkeypatch.setattr(environment, "package_version", lambda name: "9.9.9" if name == "numpy" else real(name))
    monkeypatch.chdir(folder)
    _, report = reproduce.reproduce(child.info.run_id, store, None, folder / "again")
    assert f"numpy.version: {real('numpy')} → 9.9.9" in report


def test_reproduce_of_a_sweep_re_runs_every_child_into_one_table(sweep, monkeypatch) -> None:
    from fvexp.tools import reproduce

    folder, store = sweep
    monkeypatch.chdir(folder)
    parent = next(r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "parent").info.run_id
    children = {r.info.run_id for r in all_runs(store) if r.data.tags.get("mlflow.parentRunId") == parent}
    identical, report = reproduce.reproduce_any(parent, store, reproduce.Options(folder / "again"), None)
    assert identical, report
    header, *rows, summary = report.splitlines()
    assert header.split() == ["child", "name", "status", "reproduced"]
    assert {row.split()[0] for row in rows} == children and len(rows) == 4
    assert all(row.split()[2:] == ["FINISHED", "identical"] for row in rows), rows
    assert summary == f"4 of 4 children of sweep {parent} identical"
    identical, report = reproduce.reproduce_any(parent, store, reproduce.Options(folder / "again"), 1)
    assert identical and report.splitlines()[-1] == f"1 of 1 children of sweep {parent} identical (a sample of 1 of 4)"


def test_bad_inputs_get_one_clear_message(sweep, tmp_path: Path) -> None:
    folder, store = sweep
    done = module("reproduce", "0123456789abcdef", cwd=folder, store=store)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"fvexp.reproduce: error: no run '0123456789abcdef' in the store {store}; if it "
                                   "was logged elsewhere, pass that store with --store or MLFLOW_TRACKING_URI")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    foreign = mlflow.MlflowClient(other).create_run("0").info.run_id
    done = module("compare", foreign, cwd=folder, store=store)
    assert f"no run '{foreign}' in the store {store}" in done.stderr
    bare = mlflow.MlflowClient(store).create_run("0").info.run_id  # a run not made by fvexp
    done = module("reproduce", bare, cwd=folder, store=store)
    assert "its record lacks the artifact(s) config.yaml, image.png" in done.stderr
    failing = fvexp("-m", "objective.layer=nope,_blocks.99", "render.steps=2", "render.size=64",
                    "tracking.experiment=broken", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store})
    assert failing.returncode == 2
    done = module("compare", cwd=folder, store=store)
    assert done.returncode == 1 and "has no finished runs (2 failed)" in done.stderr
    broken = next(r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "parent"
                  and r.data.tags.get("fvexp.jobs.failed") == "2")
    assert broken.info.status == "FAILED"


def test_failed_jobs_are_shown_not_dropped(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    done = fvexp("-m", "objective.channel=5,999", "render.steps=4", "render.size=64", "progress=false",
                 "hydra/launcher=joblib", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store})
    assert done.returncode == 2  # the sweep went on past the job that failed (bad input) in its own process
    parent = next(r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "parent")
    assert parent.info.status == "FINISHED" and parent.data.tags["fvexp.jobs.failed"] == "1"
    done = module("compare", "--out", str(tmp_path / "compare"), cwd=tmp_path, store=store)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "compare" / "runs.csv").open()))
    assert [(r["objective.channel"], r["status"]) for r in rows] == [("5", "FINISHED"), ("999", "FAILED")]
    sheet = Image.open(tmp_path / "compare" / "contact_sheet.png")
    assert 2 * 192 < sheet.width < 3 * 192 and sheet.height < 2 * 192  # one row of two, the failed one grey


def test_eight_parallel_jobs_on_one_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    done = fvexp("-m", "seed=0,1,2,3,4,5,6,7", "render.steps=2", "render.size=32", "objective.layer=_blocks.4",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=8", "threads=1", "progress=false", cwd=tmp_path,
                 env={"MLFLOW_TRACKING_URI": store})
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = [r for r in all_runs(store) if r.data.tags.get("fvexp.role") == "job"]
    assert sorted(int(r.data.params["seed"]) for r in jobs) == list(range(8))
    assert all(r.info.status == "FINISHED" for r in jobs)
    assert all(len(mlflow.MlflowClient(store).get_metric_history(r.info.run_id, "objective")) == 2 for r in jobs)
