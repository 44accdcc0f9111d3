"""Fixtures for the dashboard tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.tui.helpers import png_bytes
from tui.widgets.preview import detect_graphics

# Screens must not depend on the terminal running the tests: always half blocks.
detect_graphics(force="halfcell")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # textual-image 0.12 calls Image.getdata, deprecated in Pillow 13; not ours to fix
    for item in items:
        if "tests/tui/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings(
                "ignore:Image.Image.getdata is deprecated:DeprecationWarning"))


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Wall-clock strings in snapshots must not depend on the machine's time zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A folder with three tiny PNGs."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i, c in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        (d / f"img{i}.png").write_bytes(png_bytes(c))
    return d
