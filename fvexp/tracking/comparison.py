"""A sweep's comparison: every arm's final image on one contact sheet, and a table of the arms' key numbers.

`fvexp-compare` writes it to files; at the end of every tracked sweep (and again with each
`fvexp-compare` of it) the sheet is also logged to the sweep's parent run under `compare/` and
shown, above the table, as that run's description (`mlflow.note.content`), which MLflow's UI renders
as Markdown on the run's own page. That page is where the UI leads from the sweep, so the
comparison is the first thing a user meets there, not a file three folders down its Artifacts tab.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageDraw

from fvexp.errors import FvexpError
from fvexp.optvis.images import contact_sheet
from fvexp.tracking.ui import ORDER_METRIC, run_link, runs_link

SIDE = 192
WRAP = 8  # cells across, at most, when only the columns vary
PAGE_SIZE = 36  # cells per contact sheet
FOLDER = "compare"  # the parent run's artifact folder for the comparison
NOTE = "mlflow.note.content"  # the run's description in MLflow's UI, rendered as Markdown
NOTE_LIMIT = 8000  # MLflow's longest tag value
KEY_METRICS = {"objective": ORDER_METRIC, "HF energy": "high_frequency_energy", "slope": "spectral_slope",
               "interpretability": "interpretability"}  # the note's columns: title -> metric
INTERVAL = ("interpretability.low", "interpretability.high")  # its 95 % interval, shown beside it


@dataclass
class Cell:
    run: Any
    overrides: dict[str, str]
    image: Image.Image | None


def arms(client: Any, parent: Any) -> list:
    """The child runs of a sweep's parent run, in the sweep's order (its job numbers)."""
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    return sorted(children, key=lambda r: int(r.data.tags.get("fvexp.job") or 0))


def overrides_of(run: Any) -> dict[str, str]:
    return dict(o.split("=", 1) for o in run.data.tags.get("overrides", "").split() if "=" in o)


def cells_of(client: Any, runs: list) -> list[Cell]:
    """Each run with its overrides and final image (None where it has none: failed, still running)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per image says nothing
    with tempfile.TemporaryDirectory() as tmp:
        return [Cell(r, overrides_of(r), final_image(client, r, tmp)) for r in runs]


def varying(cells: list[Cell]) -> list[str]:
    """The override keys whose values differ between the cells, in the order they were given."""
    return [k for k in dict.fromkeys(k for c in cells for k in c.overrides)
            if len({c.overrides.get(k) for c in cells}) > 1]


def axes(varying: list[str], rows: str | None, cols: str | None) -> tuple[str | None, str | None]:
    """Rows and columns of the sheet: as asked, else the first two overrides that vary."""
    for key, flag in ((rows, "--rows"), (cols, "--cols")):
        if key and key not in varying:
            raise FvexpError(f"{flag} {key!r} does not vary in these runs; varying: {', '.join(varying) or 'nothing'}")
    rest = [k for k in varying if k not in (rows, cols)]
    if not rows and not cols and len(rest) == 1:  # one thing varies: read it left to right
        return None, rest[0]
    rows = rows or (rest.pop(0) if rest else None)
    cols = cols or (rest.pop(0) if rest else None)
    return rows, cols


def final_image(client: Any, run: Any, tmp: str) -> Image.Image | None:
    try:
        return Image.open(client.download_artifacts(run.info.run_id, "image.png", tmp)).convert("RGB")
    except Exception:  # a failed or running run may have no image yet: its cell says so
        return None


def placeholder(run: Any) -> Image.Image:
    """A grey cell that says why a run has no image."""
    image = Image.new("RGB", (SIDE, SIDE), (200, 200, 200))
    text = f"{run.info.status}\n" + textwrap.fill(run.data.tags.get("error", "")[:160], 26)
    ImageDraw.Draw(image).multiline_text((8, 8), text, fill=(120, 0, 0))
    return image


def label(cell: Cell, varying: list[str], metric: str) -> str:
    lines = [f"{k}={cell.overrides.get(k, '-')}" for k in varying] or [cell.run.info.run_name]
    value = cell.run.data.metrics.get(metric)
    lines.append(f"{metric} {value:.4g}" if value is not None else cell.run.info.status.lower())
    return "\n".join(lines)


def sheets(cells: list[Cell], rows_key: str | None, cols_key: str | None, varying: list[str], metric: str,
           page_size: int, out: Path) -> list[Path]:
    """Contact sheets laid out rows × columns by the two axes, `page_size` cells a page."""
    row_values = list(dict.fromkeys(c.overrides.get(rows_key, "") for c in cells)) if rows_key else [""]
    col_values = list(dict.fromkeys(c.overrides.get(cols_key, "") for c in cells)) if cols_key else [""]
    by_position: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        position = tuple(cell.overrides.get(k, "") if k else "" for k in (rows_key, cols_key))
        by_position.setdefault(position, []).append(cell)
    depth = max(len(v) for v in by_position.values())  # several runs per position: other overrides vary too
    grid: list[tuple[Image.Image, str]] = []
    for row, layer in itertools.product(row_values, range(depth)):
        for col in col_values:
            found = by_position.get((row, col), [])
            if layer < len(found):
                cell = found[layer]
                grid.append((cell.image or placeholder(cell.run), label(cell, varying, metric)))
            else:
                grid.append((Image.new("RGB", (SIDE, SIDE), "white"), ""))
    columns = len(col_values) if rows_key else min(len(col_values), WRAP)  # a single row wraps
    per_page = max(columns, page_size // columns * columns)
    paths = []
    for page_number, start in enumerate(range(0, len(grid), per_page), 1):
        suffix = f"_{page_number}" if len(grid) > per_page else ""
        path = out / f"contact_sheet{suffix}.png"
        contact_sheet(grid[start:start + per_page], columns=columns, side=SIDE).save(path)
        paths.append(path)
    return paths


def number(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return ""
    if name == KEY_METRICS["interpretability"] and all(bound in metrics for bound in INTERVAL):
        return f"{value:.3g} [{metrics[INTERVAL[0]]:.3g}, {metrics[INTERVAL[1]]:.3g}]"
    return f"{value:.4g}"


def cell_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def note(parent: Any, cells: list[Cell], keys: list[str], sheet_names: Iterable[str], metric: str) -> str:
    """The parent run's description: the contact sheets, then a Markdown table of arms × key metrics.

    Links are relative to the UI's own address (its pages are `#/...`, artifacts `get-artifact?...`),
    so they work on whichever host serves the store. Rows past MLflow's tag limit are left out, saying so.
    """
    run_id, experiment = parent.info.run_id, parent.info.experiment_id
    finished = sum(c.run.info.status == "FINISHED" for c in cells)
    pictures = [f"![{name}](get-artifact?path={quote(f'{FOLDER}/{name}', safe='')}&run_uuid={run_id})"
                for name in sheet_names]
    head = [f"**{cell_text(parent.info.run_name or run_id)}**: {len(cells)} arms, {finished} finished. "
            f"Each arm's final image, labelled with its overrides and `{metric}`:", "", *pictures, ""]
    shown = {title: name for title, name in KEY_METRICS.items() if any(name in c.run.data.metrics for c in cells)}
    titles = [f"{t} [95 % interval]" if t == "interpretability" else t for t in shown]
    table = ["| arm | " + " | ".join([*keys, "status", *titles]) + " |", "|---" * (len(keys) + 2 + len(shown)) + "|"]
    tail = ["", f"[The arms in the runs table]({runs_link('', experiment, run_id)}) · [their images side by side]"
                f"({runs_link('', experiment, run_id, charts=True)}) · `fvexp-compare {run_id}` rewrites this "
                "description."]
    for index, cell in enumerate(cells):
        link = run_link("", experiment, cell.run.info.run_id)
        row = (f"| [{cell.run.data.tags.get('fvexp.job', index)}]({link}) | "
               + " | ".join([*(cell_text(cell.overrides.get(k, "")) for k in keys), cell.run.info.status,
                             *(number(cell.run.data.metrics, name) for name in shown.values())]) + " |")
        if len("\n".join([*head, *table, row, *tail])) > NOTE_LIMIT - 100:
            table.append(f"\n{len(cells) - index} more arms: the runs table lists them all.")
            break
        table.append(row)
    return "\n".join([*head, *table, *tail])


def publish(client: Any, parent: Any, cells: list[Cell], keys: list[str], sheet_paths: list[Path],
            metric: str) -> None:
    """Show the comparison on the parent run's own page: its sheets (logged already) and the table."""
    client.set_tag(parent.info.run_id, NOTE, note(parent, cells, keys, [p.name for p in sheet_paths], metric))


def summarize(client: Any, parent_run_id: str) -> None:
    """At a sweep's end: its contact sheet logged to the parent run under `compare/`, and the description."""
    parent = client.get_run(parent_run_id)
    cells = cells_of(client, arms(client, parent))
    if not cells:
        return
    keys = varying(cells)
    rows_key, cols_key = axes(keys, None, None)
    with tempfile.TemporaryDirectory() as tmp:
        drawn = sheets(cells, rows_key, cols_key, keys, ORDER_METRIC, PAGE_SIZE, Path(tmp))
        for path in drawn:
            client.log_artifact(parent_run_id, str(path), FOLDER)
    publish(client, parent, cells, keys, drawn, ORDER_METRIC)
