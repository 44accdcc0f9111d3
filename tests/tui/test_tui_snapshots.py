"""Snapshot tests of every screen at 80x24 and 160x48, with fixed data and a frozen clock.

Update after an intended change with `pytest tests/tui --snapshot-update`, then look
at the SVGs (pytest writes a report of the differences when one fails).
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_textual_snapshot", reason="pytest-textual-snapshot is not installed")

from tests.tui.scenarios import SCENES, Scene  # noqa: E402

CASES = [pytest.param(scene, size, id=f"{scene.name}-{size[0]}x{size[1]}")
         for scene in SCENES for size in scene.sizes]


@pytest.mark.parametrize(("scene", "size"), CASES)
def test_screen(scene: Scene, size: tuple[int, int], snap_compare, utc) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=scene.run)
