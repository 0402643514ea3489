"""Shared pytest hooks and checkpoint fixtures. Server helpers live in triton_server.py (import it from any test
module); the production-path constants in production_helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from production_helpers import PP, TP

from build_engine import convert
from tooling import fixtures


@pytest.fixture(scope="session")
def nemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Nemotron-shaped zarr fixture checkpoint."""
    return fixtures.write_fixture(tmp_path_factory.mktemp("nemo") / "nemotron", arch="nemotron", fmt="zarr")


@pytest.fixture(scope="session")
def single(nemo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its single-process TP×PP conversion (the reference every parallel run must reproduce byte for byte)."""
    return convert.convert(nemo, tmp_path_factory.mktemp("single") / "ckpt", TP, PP, progress=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test gets the log tail of every tritonserver running at that moment."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        try:
            from triton_server import RUNNING
        except ImportError:
            return
        for server in RUNNING:
            report.sections.append((f"tritonserver log ({server.log_path})", server.log_tail(80)))
