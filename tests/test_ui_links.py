"""The links into MLflow's UI that runs, sweeps, fvexp-compare and fvexp-server print (the browser test opens them)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fvexp.tools.server import landing
from fvexp.tracking.ui import directions, run_link, runs_link, ui_address


def query(link: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(urlsplit(link).fragment).query)


def test_a_sweep_s_link_lists_its_arms_flat_in_the_model_training_view() -> None:
    link = runs_link("http://127.0.0.1:5000", "7", "abc")
    assert link.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    assert query(link) == {"workflowType": ["machine_learning"], "searchFilter": ["tags.mlflow.parentRunId = 'abc'"],
                           "orderByKey": ["metrics.`objective_untransformed`"], "orderByAsc": ["false"]}
    assert query(runs_link("", "7", "abc", charts=True))["compareRunsMode"] == ["CHART"]
    assert run_link("", "7", "r1") == "#/experiments/7/runs/r1?workflowType=machine_learning"


def test_a_server_is_its_own_ui_and_a_database_needs_mlflow_ui() -> None:
    assert ui_address("http://alice:s3cret@tracking:5000/") == ("http://tracking:5000", None)
    store = "sqlite:////data/mlflow.db"
    assert ui_address(store) == ("http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {store} --port 5000")
    assert ui_address("sqlite:////my runs/m.db")[1] == "mlflow ui --backend-store-uri 'sqlite:////my runs/m.db' " \
                                                       "--port 5000"  # a path with a space, quoted to be pasted
    said = directions("postgresql://u:pw@db/fvexp", [("this run", "LINK")])
    assert said.splitlines() == ["fvexp: this run in the MLflow UI: LINK", "fvexp: (start the UI with: mlflow ui "
                                 "--backend-store-uri 'postgresql://u:***@db/fvexp' --port 5000)"]


def test_fvexp_server_links_the_experiments_until_fvexp_s_exists(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # tests/test_mlflow_ui.py checks the link once it exists
    assert landing(store, "0.0.0.0", 5001) == "http://127.0.0.1:5001/#/experiments?workflowType=machine_learning"
    assert landing(store, "::1", 5001) == "http://[::1]:5001/#/experiments?workflowType=machine_learning"
    assert not (tmp_path / "mlflow.db").exists()  # looking created nothing: the store is mlflow server's to make
