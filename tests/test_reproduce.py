"""`fvexp-reproduce` at the recorded commit: after a refactor, from a dirty tree, from a store whose commit is gone.

The history is real: a git repository with a copy of fvexp records a run, records another from a
dirty tree, then renames a `_target_` (`fvexp.optvis.transforms.Jitter` becomes `Shift`) and commits,
so that its current code can no longer build the first run's config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from fvexp.app.environment import changes, patch_digest
from fvexp.tools import reproduce, venvs
from fvexp.tools.rerun import command, unbuildable
from fvexp.tools.verdict import judge
from fvexp.tools.worktrees import checkout
from tests.conftest import ROOT, make

TINY = ("render.steps=3", "render.size=48", "threads=1", "progress=false")
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@dataclass
class History:
    repo: Path
    store: str
    first: str  # the commit the run was recorded at
    run: str  # recorded with a changed config file: a dirty tree
    out: Path  # fvexp-reproduce --out: re-runs and cached worktrees


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT}).stdout.strip()


def python(repo: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The current interpreter with `repo`'s fvexp first on the path, as a user of that checkout runs it."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-P", *args], cwd=cwd, env={**env, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory):
    """Commit one; a run recorded with an uncommitted change to a config; the change undone; commit two renames
    `Jitter` to `Shift` in the code and the configs. The repository's worktrees are removed at the end."""
    root = tmp_path_factory.mktemp("history")
    repo, work = root / "repo", root / "work"
    shutil.copytree(ROOT / "fvexp", repo / "fvexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", repo / "conf")
    for name in (".gitignore", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    work.mkdir()
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    store = f"sqlite:///{root / 'store.db'}"
    client = mlflow.MlflowClient(store)
    client.search_experiments()  # the tables are made here, where MLflow is imported already
    standard = repo / "conf" / "transforms" / "standard.yaml"
    original = standard.read_text()
    standard.write_text(original.replace("value: 0.5", "value: 0.25"))  # a grey that changes the pixels
    done = python(repo, "-m", "fvexp", *TINY, f"tracking.uri={store}", cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    standard.write_text(original)
    for path in [*repo.rglob("*.py"), *repo.rglob("*.yaml")]:
        text = path.read_text()
        if re.search(r"\bJitter\b", text):
            path.write_text(re.sub(r"\bJitter\b", "Shift", text))
    git(repo, "commit", "-qam", "two: Jitter is called Shift")
    yield History(repo, store, git(repo, "rev-parse", "HEAD~1"), run.info.run_id, root / "out")
    for line in git(repo, "worktree", "list", "--porcelain").splitlines()[1:]:
        if line.startswith("worktree "):
            git(repo, "worktree", "remove", "--force", line.split(" ", 1)[1])


@pytest.mark.slow  # re-run in a worktree by a process of the renamed code
def test_a_run_the_current_code_cannot_build_is_re_run_at_its_commit(history: History) -> None:
    out = history.out
    done = python(history.repo, "-m", "fvexp.tools.reproduce", history.run, "--store", history.store,
                  "--out", str(out), cwd=out.parent)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("identical (max |Δ| = 0): ") and lines[0].endswith(f"matches run {history.run}")
    assert lines[1] == ("note: the current code cannot build this run's config (transforms.pieces.jitter._target_ "
                        "fvexp.optvis.transforms.Jitter does not exist and 1 more), so it was re-run at its commit "
                        "(as --at-commit does)")
    digest = mlflow.MlflowClient(history.store).get_run(history.run).data.tags["git.diff.sha256"]
    worktree = out / "worktrees" / f"{history.first}-{digest[:12]}"
    assert lines[2:] == [f"re-ran at commit {history.first} with its recorded patch (environment/git-diff.patch) in "
                         f"{worktree} by {sys.executable}"]
    assert "class Jitter" in (worktree / "fvexp" / "optvis" / "transforms.py").read_text()
    assert git(history.repo, "rev-parse", "HEAD") != history.first  # the repository's own checkout is untouched
    client = mlflow.MlflowClient(history.store)
    [copy] = client.search_runs([client.get_run(history.run).info.experiment_id],
                                f"tags.`fvexp.reproduces` = '{history.run}'")
    assert copy.data.tags["git.commit"] == history.first and copy.data.tags["git.diff.sha256"] == digest


@pytest.mark.slow  # makes the worktrees, or reuses the one the test above made
def test_a_dirty_run_records_its_patch_and_gets_a_patched_worktree_that_is_reused(history: History) -> None:
    client = mlflow.MlflowClient(history.store)
    tags = client.get_run(history.run).data.tags
    patch = Path(client.download_artifacts(history.run, "environment/git-diff.patch", str(history.out))).read_text()
    assert tags["git.dirty"] == "true" and tags["git.commit"] == history.first
    assert tags["git.diff.sha256"] == patch_digest(patch) and len(patch_digest(patch)) == 64
    assert "-  pad: {_target_: fvexp.optvis.transforms.Pad, width: 12, value: 0.5}" in patch
    cache = history.out / "worktrees"
    worktree = checkout(history.first, patch, cache, [history.repo])
    assert worktree == cache / f"{history.first}-{tags['git.diff.sha256'][:12]}"
    assert "value: 0.25" in (worktree / "conf" / "transforms" / "standard.yaml").read_text()
    made = (worktree / ".git").stat().st_mtime_ns
    assert checkout(history.first, patch, cache, [history.repo]) == worktree
    assert (worktree / ".git").stat().st_mtime_ns == made  # reused, not made again
    (worktree / "conf" / "transforms" / "standard.yaml").write_text("edited by hand\n")
    assert checkout(history.first, patch, cache, [history.repo]) == worktree  # made again: it held other code
    assert "value: 0.25" in (worktree / "conf" / "transforms" / "standard.yaml").read_text()
    clean = checkout(history.first, "", cache, [history.repo])  # a clean run's worktree: the commit alone
    assert clean == cache / history.first
    assert "value: 0.5" in (clean / "conf" / "transforms" / "standard.yaml").read_text()


def test_a_commit_in_no_repository_is_one_line(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    client.log_text(run_id, "seed: 0\nrender: {steps: 2, size: 48}\n", "config.yaml")
    Image.new("RGB", (48, 48)).save(tmp_path / "image.png")
    client.log_artifact(run_id, str(tmp_path / "image.png"))
    for tag in reproduce.NEEDED_TAGS:
        client.set_tag(run_id, tag, "1")
    commit, gone = "0123456789abcdef0123456789abcdef01234567", tmp_path / "moved-away"
    client.set_tag(run_id, "git.commit", commit)
    client.set_tag(run_id, "git.root", str(gone))
    client.set_tag(run_id, "device", "cpu")
    client.set_terminated(run_id, "FINISHED")
    with pytest.raises(SystemExit) as stop:
        reproduce.main([run_id, "--store", store, "--at-commit", "--out", str(tmp_path / "out")])
    assert str(stop.value.code) == (
        f"fvexp.reproduce: error: run {run_id} cannot be re-run at its commit: commit {commit} is in none of the "
        f"repositories looked in ({gone} (not on this machine), {ROOT}): fetch it into one (git fetch), or name a "
        "clone that has it with --repo PATH")
    assert not (tmp_path / "out" / "worktrees").exists()


def test_a_patch_is_recorded_without_passwords_and_still_applies(tmp_path: Path) -> None:
    repo, worktrees = tmp_path / "repo", tmp_path / "worktrees"
    code = repo / "fvexp" / "stores.py"
    code.parent.mkdir(parents=True)
    code.write_text("EXAMPLE = 'postgresql://fvexp:secret@db/fvexp'\nSTEPS = 8\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    code.write_text("EXAMPLE = 'postgresql://fvexp:secret@db/fvexp'\nSTEPS = 9\nOTHER = 'mysql://me:hunter2@h/db'\n")
    (repo / "fvexp" / "new.py").write_text("NEW = 1\n")  # not added to git yet: part of the code that ran
    patch = changes(repo)
    assert "secret" not in patch and "hunter2" not in patch and "postgresql://fvexp:***@db" in patch
    worktree = checkout(git(repo, "rev-parse", "HEAD"), patch, worktrees, [repo])
    assert (worktree / "fvexp" / "stores.py").read_text() == (  # the commit's own line whole, the added one redacted
        "EXAMPLE = 'postgresql://fvexp:secret@db/fvexp'\nSTEPS = 9\nOTHER = 'mysql://me:***@h/db'\n")
    assert (worktree / "fvexp" / "new.py").read_text() == "NEW = 1\n"
    assert patch_digest(changes(worktree)) == patch_digest(patch)  # a re-run there records the same hash
    git(repo, "worktree", "remove", "--force", str(worktree))


def test_the_current_code_says_what_it_cannot_build() -> None:
    cfg = make()
    assert unbuildable(cfg) == []
    cfg.transforms.pieces.jitter._target_ = "fvexp.optvis.transforms.Shift"
    assert unbuildable(cfg) == ["transforms.pieces.jitter._target_ fvexp.optvis.transforms.Shift does not exist"]
    cfg = OmegaConf.create(OmegaConf.to_container(make()))
    del cfg.regularizers  # a config from before the regularizers' schema
    assert unbuildable(cfg) == ["Missing key regularizers"]


def test_the_re_run_command_keeps_the_recorded_overrides_and_sets_only_keys_the_commit_has() -> None:
    cfg = make()
    argv = command("/py", ["param=pixel", "threads=4", "tracking.uri=x", "render.steps=9"],
                   {"threads": 1, "render.steps": 3, "render.thresholds": [1, 3], "no.such.key": 1,
                    "tracking.uri": "sqlite:////tmp/a b.db", "hydra.run.dir": "/tmp/out"}, cfg)
    assert argv == ["/py", "-P", "-m", "fvexp", "param=pixel", "threads=1", "render.steps=3",
                    "render.thresholds=[1,3]", "tracking.uri='sqlite:////tmp/a b.db'", "hydra.run.dir=/tmp/out"]


def test_env_installs_the_recorded_freeze_but_fvexp_without_dependencies(tmp_path: Path) -> None:
    freeze = "fvexp==0.1.0\nnumpy==2.4.6\n\ntorch==2.14.1\n"
    assert venvs.requirements(freeze) == ["numpy==2.4.6", "torch==2.14.1"]
    folder = venvs.folder_for(freeze, tmp_path)
    assert folder == venvs.folder_for("numpy==2.4.6\ntorch==2.14.1\nfvexp==0.2.0\n", tmp_path)  # fvexp is not in it
    assert folder != venvs.folder_for("numpy==2.4.5\ntorch==2.14.1\n", tmp_path)
    assert venvs.plan(folder, "/usr/bin/python3") == [
        ["/usr/bin/python3", "-m", "venv", str(folder)],
        [str(folder / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--no-deps",
         "--no-input", "-r", str(folder / "requirements.txt")]]


def test_the_verdict_separates_drift_from_a_defect() -> None:
    image = np.zeros((4, 4, 3), dtype=np.int16)
    other = image.copy()
    other[0, 0, 0] = 3
    tags = {"torch.threads": "1", "device": "cpu", "mlflow.version": "3", "fvexp.host": "a"}
    same = judge(image, other, tags, {**tags, "mlflow.version": "4", "fvexp.host": "b"}, (1.5, 1.25))
    assert same.kind == "DEFECT" and same.headline().startswith(
        "DEFECT: same environment, different bytes: max |Δ| = 3 of 255, objective 1.5 → 1.25 (Δ -0.25); ")
    assert same.details() == ["other differences (no effect on pixels): mlflow.version: 3 → 4; fvexp.host: a → b"]
    drift = judge(image, other, tags, {**tags, "torch.threads": "2"}, (1.5, 1.5))
    assert drift.headline() == ("differs, expected drift (different threads): max |Δ| = 3 of 255, objective 1.5 "
                                "(the same)")
    assert drift.details() == ["environment differences: torch.threads: 1 → 2"]
    gpu = {**tags, "device": "cuda:0"}
    other[0, 0, 0] = 1
    assert judge(image, other, gpu, gpu, (None, None)).kind == "within 1/255"
    assert judge(image, image, tags, tags, (1.0, 1.0)).headline() == "identical (max |Δ| = 0)"
