"""Contact-sheet layout: axes from what varies, paging of large sweeps (no MLflow needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from fvexp.errors import FvexpError
from fvexp.tools.compare import Cell, axes, sheets


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
