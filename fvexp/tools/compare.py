"""Compare the runs of a sweep at a glance: a contact sheet, CSV and Markdown tables, an HTML page.

    python -m fvexp.tools.compare                          # the latest sweep in the store
    python -m fvexp.tools.compare PARENT_RUN_ID            # one sweep
    python -m fvexp.tools.compare --experiment fvexp --filter "params.`param._target_` = 'fvexp.optvis.params.Pixel'"
    python -m fvexp.tools.compare --filter "params.seed = '0'"      # the runs of the experiment `fvexp` that match

The runs are chosen one way: a sweep's RUN_ID, or --experiment and/or --filter (--filter alone
searches the experiment `fvexp`, tracking.experiment's default), or nothing (the latest sweep).

The sheet is a grid whose rows and columns are the overrides that vary across the runs (chosen
automatically, or by --rows/--cols), each cell labelled with its overrides and a metric. Failed
and unfinished runs get a cell saying so. Everything is written to --out and logged to the sweep's
parent run under `compare/`, whose description (its page in MLflow's UI) becomes the sheet and a table
of the arms' key metrics; the paths are printed, and the links to that page and to the arms on stderr.
"""

from __future__ import annotations

import argparse
import base64
import csv
import sys
from pathlib import Path
from typing import Any

from fvexp.app.pages import write_page
from fvexp.credentials import redact
from fvexp.errors import FvexpError
from fvexp.tools.arguments import add_store, one_line_errors
from fvexp.tracking.comparison import FOLDER, PAGE_SIZE, Cell, arms, axes, cells_of, publish, sheets, varying
from fvexp.tracking.store import PARENT, get_run, reader, running_orphans
from fvexp.tracking.ui import ORDER_METRIC, sweep_directions
from fvexp.tracking.writer import EXPERIMENT


@one_line_errors("fvexp.compare")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id", nargs="?", help="a sweep's parent run (default: the latest sweep)")
    parser.add_argument("--experiment", help="compare the runs of this MLflow experiment instead of a sweep")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"params.seed = '0'\": "
                        f"compare the matching runs of --experiment (without it, of the experiment {EXPERIMENT!r})")
    parser.add_argument("--rows", help="override key laid out down the sheet")
    parser.add_argument("--cols", help="override key laid out across the sheet")
    parser.add_argument("--metric", default=ORDER_METRIC, help="metric printed under each image")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE, help="cells per contact sheet")
    add_store(parser)
    parser.add_argument("--out", type=Path, help="output folder (default outputs/compare/<sweep>)")
    args = parser.parse_args(argv)
    for path in compare(args):
        print(path)


def compare(args: argparse.Namespace) -> list[Path]:
    if args.run_id and (args.experiment or args.filter):
        given = " and ".join(f for f, v in (("--experiment", args.experiment), ("--filter", args.filter)) if v)
        raise FvexpError(f"give a sweep's RUN_ID or {given}, not both: RUN_ID compares that sweep, {given} the "
                         "runs of an experiment")
    client = reader(args.store)
    parent, runs = select(client, args)
    mention_orphans([*runs, *([parent] if parent else [])])
    if not any(r.info.status == "FINISHED" for r in runs):
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(count(r.info.status for r in runs).items()))
        raise FvexpError(f"{describe(parent, args)} has no finished runs ({counts or 'no runs at all'})")
    cells = cells_of(client, runs)
    keys = varying(cells)
    rows_key, cols_key = axes(keys, args.rows, args.cols)
    out = args.out or Path("outputs") / "compare" / folder_name(parent, args)
    out.mkdir(parents=True, exist_ok=True)
    drawn = sheets(cells, rows_key, cols_key, keys, args.metric, args.page_size, out)
    metrics = sorted({m for c in cells for m in c.run.data.metrics})
    written = [*drawn, table_csv(cells, keys, metrics, out / "runs.csv"),
               table_md(cells, keys, metrics, out / "runs.md")]
    written.append(page(cells, keys, metrics, drawn, out / "index.html", describe(parent, args)))
    if parent:
        for path in written:
            client.log_artifact(parent.info.run_id, str(path), FOLDER)
        publish(client, parent, cells, keys, drawn, args.metric)
        print(sweep_directions(args.store, parent.info.experiment_id, parent.info.run_id), file=sys.stderr)
    return written


def select(client: Any, args: argparse.Namespace) -> tuple[Any | None, list]:
    """The parent run (if any) and its runs, from a run id, an experiment and filter, or the latest sweep."""
    from mlflow.exceptions import MlflowException

    experiments = [e.experiment_id for e in client.search_experiments()]
    name = experiment_of(args)
    if name:
        found = client.get_experiment_by_name(name)
        if found is None:
            names = [e.name for e in client.search_experiments()]
            hint = "" if args.experiment else f" (--filter without --experiment searches the experiment {name!r})"
            raise FvexpError(f"no experiment {name!r} in {redact(args.store)}{hint}; experiments: {', '.join(names)}")
        try:  # parents are left out here, not in the filter: `tags.x != 'y'` also drops the runs without tag x
            runs = [r for r in client.search_runs([found.experiment_id], args.filter,
                                                  order_by=["attributes.start_time ASC"], max_results=5000)
                    if r.data.tags.get("fvexp.role") != PARENT]
        except MlflowException as error:
            raise FvexpError(f"bad --filter {args.filter!r}: {one_line(error.message)}") from None
        if not runs and args.filter:
            raise FvexpError(f"no run of the experiment {name!r} matches --filter {args.filter!r}")
        return None, runs
    if args.run_id:
        parent = get_run(client, args.run_id, args.store)
        if parent.data.tags.get("fvexp.role") != PARENT:
            raise FvexpError(f"run {args.run_id} is not a sweep's parent run; its parent is "
                             f"{parent.data.tags.get('mlflow.parentRunId', 'none (a single run)')}")
    else:
        latest = client.search_runs(experiments, f"tags.`fvexp.role` = '{PARENT}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if not latest:
            raise FvexpError(f"no sweep in the store {redact(args.store)}; run one with fvexp -m ... first")
        parent = latest[0]
    return parent, arms(client, parent)


def experiment_of(args: argparse.Namespace) -> str | None:
    """The experiment whose runs are compared: --experiment, else `fvexp` with --filter; None for a sweep."""
    return args.experiment or (EXPERIMENT if args.filter else None)


def one_line(text: str) -> str:
    return " ".join(text.split())


def mention_orphans(runs: list) -> None:
    """One line on stderr about RUNNING runs whose process is gone (killed outright): they will never end."""
    orphans = running_orphans(runs)
    if orphans:
        are, its, them = ("is", "its", "it") if len(orphans) == 1 else ("are", "their", "them")
        print(f"fvexp.compare: warning: {len(orphans)} run{'s' * (len(orphans) > 1)} {are} RUNNING but {its} "
              f"process is gone; fvexp-orphans --mark ends {them}", file=sys.stderr)


def folder_name(parent: Any | None, args: argparse.Namespace) -> str:
    """The sweep's own folder name (date_time), else the experiment's name."""
    if parent is None:
        return experiment_of(args)
    sweep = Path(parent.data.tags.get("fvexp.sweep", parent.info.run_id))
    return f"{sweep.parent.name}_{sweep.name}"


def describe(parent: Any | None, args: argparse.Namespace) -> str:
    if parent:
        return f"sweep {parent.info.run_name!r} ({parent.info.run_id})"
    return f"experiment {experiment_of(args)!r}" + (f" (--filter {args.filter!r})" if args.filter else "")


def count(items: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in items:
        totals[item] = totals.get(item, 0) + 1
    return totals


def rows_of(cells: list[Cell], keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["run_id", "name", "status", *keys, *metrics]
    rows = [[c.run.info.run_id, c.run.info.run_name, c.run.info.status, *(c.overrides.get(k, "") for k in keys),
             *(f"{c.run.data.metrics[m]:.6g}" if m in c.run.data.metrics else "" for m in metrics)] for c in cells]
    return header, rows


def table_csv(cells: list[Cell], keys: list[str], metrics: list[str], path: Path) -> Path:
    header, rows = rows_of(cells, keys, metrics)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def table_md(cells: list[Cell], keys: list[str], metrics: list[str], path: Path) -> Path:
    header, rows = rows_of(cells, keys, metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def page(cells: list[Cell], keys: list[str], metrics: list[str], pictures: list[Path], path: Path,
         title: str) -> Path:
    """One self-contained HTML file: the sheets inlined as data URIs, and the table."""
    header, rows = rows_of(cells, keys, metrics)
    inlined = [(f"data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}", p.name) for p in pictures]
    write_page(path, "compare.html", title=title, pictures=inlined, header=header, rows=rows)
    return path


if __name__ == "__main__":
    main()
