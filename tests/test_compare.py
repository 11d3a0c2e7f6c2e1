"""Contact-sheet layout: axes from what varies, paging of large sweeps (no MLflow needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from fvexp.errors import FvexpError
from fvexp.tools.compare import Cell, axes, sheets
from fvexp.tracking.comparison import note


def cell(status: str = "FINISHED", **overrides: str) -> Cell:
    run = SimpleNamespace(info=SimpleNamespace(status=status, run_name="r"),
                          data=SimpleNamespace(metrics={"m": 1.0}, tags={"error": "boom"}))
    return Cell(run, overrides, Image.new("RGB", (32, 32), "red") if status == "FINISHED" else None)


def test_axes_follow_what_varies() -> None:
    assert axes(["param"], None, None) == (None, "param")
    assert axes(["param", "transforms"], None, None) == ("param", "transforms")
    assert axes(["param", "transforms"], None, "param") == ("transforms", "param")
    with pytest.raises(FvexpError, match="--cols 'seed' does not vary in these runs; varying: param"):
        axes(["param"], None, "seed")


def test_large_sweeps_are_paged_and_grids_are_rows_by_columns(tmp_path: Path) -> None:
    many = [cell(seed=str(i)) for i in range(10)]
    pages = sheets(many, None, "seed", ["seed"], "m", page_size=8, out=tmp_path)
    assert [p.name for p in pages] == ["contact_sheet_1.png", "contact_sheet_2.png"]
    grid = [cell(a=a, b=b) for a in "xy" for b in "uvw"] + [cell("FAILED", a="z", b="u")]
    (tmp_path / "grid").mkdir()
    [page] = sheets(grid, "a", "b", ["a", "b"], "m", page_size=36, out=tmp_path / "grid")
    sheet = Image.open(page)
    assert 3 * 192 < sheet.width < 4 * 192 and 3 * 192 < sheet.height < 4 * 300  # 3 rows (x, y, z) × 3 columns


def arm(job: int, **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(run_id=f"r{job}", status="FINISHED", run_name=f"arm {job}"),
                           data=SimpleNamespace(metrics=metrics, tags={"fvexp.job": str(job)}))


def test_the_parent_run_s_description_is_the_sheet_and_a_table_of_key_metrics() -> None:
    parent = SimpleNamespace(info=SimpleNamespace(run_id="p1", experiment_id="3", run_name="sweep x"))
    measured = {"objective_untransformed": 21.91, "high_frequency_energy": 0.68, "spectral_slope": 0.05,
                "interpretability": 0.625, "interpretability.low": 0.55, "interpretability.high": 0.7}
    cells = [Cell(arm(0, **measured), {"ablation": "naive"}, None),
             Cell(arm(1, objective_untransformed=22.1), {"ablation": "a|b"}, None)]
    text = note(parent, cells, ["ablation"], ["contact_sheet.png"], "objective_untransformed")
    assert "![contact_sheet.png](get-artifact?path=compare%2Fcontact_sheet.png&run_uuid=p1)" in text
    assert "| arm | ablation | status | objective | HF energy | slope | interpretability [95 % interval] |" in text
    assert ("| [0](#/experiments/3/runs/r0?workflowType=machine_learning) | naive | FINISHED | 21.91 | 0.68 | 0.05 "
            "| 0.625 [0.55, 0.7] |") in text
    assert "| a\\|b | FINISHED | 22.1 |  |  |  |" in text  # a | in a value is escaped; what was not measured is empty
    many = note(parent, [cells[0]] * 400, ["ablation"], ["contact_sheet.png"], "objective_untransformed")
    assert len(many) <= 8000 and many.count("| naive |") < 400 and "more arms: the runs table lists them all" in many
