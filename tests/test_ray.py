"""Sweeps on Ray (`hydra-ray-launcher`): a local cluster the launcher starts and ends, and an existing one."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.conftest import free_port, fvexp

pytestmark = pytest.mark.slow

SWEEP = ("objective.channel=0,1", "render.steps=4", "render.size=64", "progress=false")


def processes(*folders: Path) -> list[str]:
    """Live processes that name one of `folders` in their arguments or run in one (Ray's workers): 'PID CMDLINE'."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):  # what cannot be read (gone, a zombie) is None
        cmdline, cwd = " ".join(proc.info["cmdline"] or ()), proc.info["cwd"] or ""
        if proc.pid != os.getpid() and any(str(f) in cmdline or cwd.startswith(str(f)) for f in folders):
            found.append(f"{proc.pid} {cmdline[:200]}")
    return found


def left_behind(*folders: Path, wait: float = 20) -> list[str]:
    """The processes of `folders` still alive after up to `wait` seconds (Ray's workers take a moment to exit)."""
    deadline = time.monotonic() + wait
    while (found := processes(*folders)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def check_sweep(store: Path, sweep_root: Path) -> None:
    """One FINISHED parent run with two FINISHED children, one per channel, each with its own image."""
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    parents = [r for r in runs if r.data.tags.get("fvexp.role") == "parent"]
    assert len(parents) == 1 and len(runs) == 3, [(r.info.run_name, r.data.tags.get("fvexp.role")) for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["objective.channel"] == "0,1"
    assert (parent.data.tags["fvexp.jobs.finished"], parent.data.tags["fvexp.jobs.failed"]) == ("2", "0")
    children = sorted((r for r in runs if r is not parent), key=lambda r: int(r.data.params["objective.channel"]))
    assert [c.data.params["objective.channel"] for c in children] == ["0", "1"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["fvexp.role"] == "job"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["fvexp.sweep"] == parent.data.tags["fvexp.sweep"]
        if "OMP_NUM_THREADS" not in os.environ:
            assert child.data.tags["torch.threads"] == "1"  # Ray gives each job one CPU, and torch one thread
    images = []
    for child in children:
        (folder := store.parent / "downloads" / child.info.run_id).mkdir(parents=True)
        images.append(np.asarray(Image.open(client.download_artifacts(child.info.run_id, "image.png", str(folder)))))
    assert images[0].shape == images[1].shape == (64, 64, 3) and not np.array_equal(*images)
    folders = sorted(sweep_root.glob("multirun/*/*/*/image.png"))  # the jobs' folders, under the sweep's
    assert [f.parent.name.split("_")[0] for f in folders] == ["0", "1"], folders
    assert all(str(f.parent.parent.resolve()) == parent.data.tags["fvexp.sweep"] for f in folders)


def test_a_sweep_on_a_local_ray_cluster(tmp_path: Path, ray_dir: Path) -> None:
    """`hydra/launcher=ray_local` starts a Ray cluster on this machine for the sweep, and it ends with the sweep."""
    started = time.monotonic()
    done = fvexp("-m", "hydra/launcher=ray_local", *SWEEP, f"+hydra.launcher.ray.init._temp_dir={ray_dir}",
                 cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Started a local Ray instance" in done.stderr and time.monotonic() - started < 240
    assert done.stdout.count("/image.png") == 2  # the jobs' output, forwarded by Ray to the sweep's terminal
    assert left_behind(ray_dir, tmp_path) == []
    check_sweep(tmp_path / "outputs" / "mlflow.db", tmp_path / "outputs")


def test_a_sweep_on_an_existing_ray_cluster(tmp_path: Path, ray_dir: Path) -> None:
    """`hydra/launcher=ray_cluster` sends the jobs to a cluster started beforehand (`ray start`), found by its address.

    By the cluster's own address, as from a node of the cluster; `ray://HOST:10001` (Ray Client, from outside)
    also works, but its server now and then fails to start a session on a busy machine, so it is not tested here.
    """
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # not the one in ~/.ray
    port, log = free_port(), ray_dir / "ray-start.log"
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # SIGTERM ends it at once, without 30 s of draining
    with log.open("w") as output:
        cluster = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                    "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                                    f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
                                    f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false",
                                    "--disable-usage-stats", f"--temp-dir={ray_dir}"],
                                   cwd=ray_dir, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():  # --block: it runs until it is sent SIGTERM
            assert cluster.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # a job of the cluster runs in the cluster's folder (here ray_dir): the default sweep folder is absolute
        done = fvexp("-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{port}", *SWEEP,
                     cwd=tmp_path, env=auth, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Started a local Ray instance" not in done.stderr
        check_sweep(tmp_path / "outputs" / "mlflow.db", tmp_path / "outputs")
        assert not list(ray_dir.glob("outputs"))
    finally:
        cluster.terminate()  # `ray start --block` ends the processes it started
        cluster.wait(timeout=60)
        stray = left_behind(ray_dir, tmp_path)
        if stray:
            os.killpg(cluster.pid, signal.SIGKILL)  # its session, which holds all of them
    assert stray == []
