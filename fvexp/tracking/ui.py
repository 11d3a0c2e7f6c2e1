"""Links into MLflow's web UI that open where fvexp's runs are compared: the runs table, not the GenAI overview.

What MLflow 3.17's UI opens is decided by its *workflow type*, `genai` or `machine_learning`: the
`workflowType` query parameter of the page's URL, else the sidebar's GenAI / Model training switch,
which the browser remembers (localStorage `mlflow.workflowType_v1`), else `genai`. Its bundle derives
an experiment's kind from that workflow type (a feature flag wired on), so the experiment tag
`mlflow.experimentKind` that fvexp sets (`custom_model_development`) decides nothing there, and an
experiment opened without `workflowType` lands on the GenAI overview; MLflow's newer UI code syncs
the workflow type to that tag again. Every link here says `workflowType=machine_learning`.

The runs table nests a sweep's arms under its parent run, folded, whenever it is sorted by start
time (its default); sorted by anything else it lists them flat, every arm a row of its own and a
series of the chart view. A sweep's link therefore filters the experiment to the parent's children
(`searchFilter`) and sorts them by the objective, best first (`orderByKey`, `orderByAsc`).
"""

from __future__ import annotations

import shlex
from urllib.parse import quote, urlencode, urlsplit

from fvexp.credentials import redact

UI_PORT = 5000  # the port the README's `mlflow ui --port 5000` serves on
LANDING = {"workflowType": "machine_learning"}  # the "Model training" side of the UI: runs, charts, artifacts
ORDER_METRIC = "objective_untransformed"  # a sweep's arms are listed by it, best first (fvexp-compare's default)


def ui_address(store: str) -> tuple[str, str | None]:
    """The UI's address for `store`, and the command that serves it there when nothing does yet.

    A tracking server (http, https) is its own UI, reached without the credentials a URI may carry;
    a database or folder is served by `mlflow ui` on this machine.
    """
    parts = urlsplit(store)
    if parts.scheme in ("http", "https"):
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=host, query="", fragment="").geturl().rstrip("/"), None
    return f"http://127.0.0.1:{UI_PORT}", f"mlflow ui --backend-store-uri {shlex.quote(redact(store))} --port {UI_PORT}"


def page(address: str, route: str, query: dict[str, str]) -> str:
    """The UI's page `route` at `address`; with an empty address a link relative to the UI's own page."""
    return f"{address}{'/' if address else ''}#/{route}?{urlencode({**LANDING, **query}, quote_via=quote)}"


def runs_link(address: str, experiment_id: str, parent_run_id: str | None = None, charts: bool = False) -> str:
    """The experiment's runs table; with a sweep's parent run, its arms alone, flat, the best objective first.

    With `charts`, the same runs in the chart view, whose first section shows every run's image.
    """
    arms = {"searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
            "orderByKey": f"metrics.`{ORDER_METRIC}`", "orderByAsc": "false"} if parent_run_id else {}
    return page(address, f"experiments/{experiment_id}/runs", arms | ({"compareRunsMode": "CHART"} if charts else {}))


def run_link(address: str, experiment_id: str, run_id: str) -> str:
    """A run's own page: its description (a sweep's comparison), metrics, parameters and artifacts."""
    return page(address, f"experiments/{experiment_id}/runs/{run_id}", {})


def directions(store: str, links: list[tuple[str, str]]) -> str:
    """Lines for the terminal: each `(what, link)`, then how to start the UI when the store needs `mlflow ui`."""
    _, serve = ui_address(store)
    lines = [f"fvexp: {what} in the MLflow UI: {link}" for what, link in links]
    if serve:
        lines.append(f"fvexp: (start the UI with: {serve})")
    return "\n".join(lines)


def sweep_directions(store: str, experiment_id: str, parent_run_id: str) -> str:
    """Where a sweep is seen in the UI: its arms' table, their images, and its parent's page with the comparison."""
    address = ui_address(store)[0]
    return directions(store, [("the sweep's arms", runs_link(address, experiment_id, parent_run_id)),
                              ("their images", runs_link(address, experiment_id, parent_run_id, charts=True)),
                              ("their comparison", run_link(address, experiment_id, parent_run_id))])
