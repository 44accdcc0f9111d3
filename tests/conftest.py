"""Shared fixtures: a real cluster per test, the model check, the sample photos."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import Cluster, model_available, sample_photo  # noqa: E402


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest):
    c = Cluster(tmp_path)
    yield c
    c.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(c.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def needs_model() -> None:
    if not model_available():
        pytest.skip("u2netp model not provisioned in U2NET_HOME (run `make model`)")


@pytest.fixture
def photos() -> dict[str, bytes]:
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
    return {n: sample_photo(n).read_bytes() for n in names}
