"""MPI-parallel conversion: `mpirun -n N python -m build_engine.mpi_convert --nemo CKPT --output OUT --tp T --pp P`.

Every MPI process opens the checkpoint and plans the same conversion; process `i` of `N` writes the output ranks
`r` with `r % N == i` (the same split `trtllm-build` uses under MPI). The run stays atomic, exactly like the
single-process `convert()`:

1. MPI rank 0 creates the hidden `.OUT.partial-*` sibling and broadcasts its path;
2. each process writes its rank files into it;
3. after every phase all processes agree on success with an allreduce (sum) of a failure flag — any failure anywhere
   (including a bad checkpoint seen while planning) makes every process stop, rank 0 removes the partial
   directory, and every process raises the same error naming the failing MPI ranks;
4. rank 0 writes config.json, reward_metadata.json and tokenizer.model and renames the directory into place.

No process ever waits on a collective another process cannot reach: exceptions are caught per phase and turned
into the flag. A process killed outright makes `mpirun` tear the job down; what remains is only a
`.OUT.partial-*` directory, never something named `OUT`. Run with one process (plain `python -m ...`) it is the
single-process conversion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from build_engine import convert as conv
from build_engine.atomic import commit_directory, partial_directory
from build_engine.nemo.source import open_checkpoint
from reward_triton.engine.mapping import Mapping

T = TypeVar("T")


class Comm(Protocol):
    """The slice of `mpi4py.MPI.Comm` this module uses (a fake one drives the failure-path tests)."""

    def Get_rank(self) -> int: ...  # noqa: N802 - mpi4py naming
    def Get_size(self) -> int: ...  # noqa: N802
    def bcast(self, obj: Any, root: int = 0) -> Any: ...
    def allreduce(self, sendobj: Any) -> Any: ...  # default op: MPI.SUM
    def allgather(self, sendobj: Any) -> list[Any]: ...


class MPIConversionError(RuntimeError):
    """At least one MPI process failed; the message lists each failing process and its error."""


def world() -> Comm:
    from mpi4py import MPI  # imported lazily: MPI_Init happens here, only for real MPI runs

    return MPI.COMM_WORLD


def my_ranks(world_size: int, mpi_rank: int, mpi_size: int) -> list[int]:
    """Output ranks this MPI process writes: r % mpi_size == mpi_rank."""
    return [r for r in range(world_size) if r % mpi_size == mpi_rank]


class _Run:
    """Phase runner: every phase ends in the same collective on every process, whatever happened inside it."""

    def __init__(self, comm: Comm, cleanup: Callable[[], None]) -> None:
        self.comm, self.cleanup = comm, cleanup
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def phase(self, name: str, fn: Callable[[], T]) -> T | None:
        result: T | None = None
        error: str | None = None
        caught: BaseException | None = None
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - every failure must reach the collective below
            error, caught = f"{type(e).__name__}: {e}", e
        failed = self.comm.allreduce(1 if error is not None else 0)  # number of failed processes
        if failed:
            errors = self.comm.allgather(error)  # every process reaches this: the flag is the same everywhere
            if self.rank == 0:
                self.cleanup()
            lines = [f"  MPI rank {i}: {msg}" for i, msg in enumerate(errors) if msg is not None]
            summary = f"conversion failed during {name} on {len(lines)} process(es):\n" + "\n".join(lines)
            raise MPIConversionError(summary) from caught
        return result


def mpi_convert(
    nemo: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tp: int = 1,
    pp: int = 1,
    dtype: str = "bfloat16",
    lm_head: str = "padded",
    progress: bool = True,
    comm: Comm | None = None,
    parallel_embedding: bool = False,
) -> Path:
    """Convert with every process of `comm` (default MPI.COMM_WORLD); returns `output` on every process."""
    comm = comm if comm is not None else world()
    output = Path(output).absolute()
    mapping = Mapping(tp, pp)
    state: dict[str, Any] = {}

    def cleanup() -> None:
        tmp = state.get("tmp")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    run = _Run(comm, cleanup)

    def plan() -> None:
        ckpt = open_checkpoint(nemo)
        state["ckpt"] = ckpt
        state["spec"], state["planner"] = conv.prepare(ckpt, mapping, dtype, lm_head, parallel_embedding)
        if run.rank == 0:
            state["tmp"] = partial_directory(output)

    try:
        run.phase("planning", plan)
        tmp = Path(comm.bcast(str(state["tmp"]) if run.rank == 0 else None, root=0))
        state["tmp"] = tmp if run.rank == 0 else None
        mine = my_ranks(mapping.world_size, run.rank, run.size)

        def write() -> None:
            if not tmp.is_dir():
                raise FileNotFoundError(f"{tmp}: partial directory is not visible here (use storage all nodes share)")
            conv.convert_ranks(state["planner"], mine, tmp, progress=progress and run.rank == 0)

        run.phase("rank files", write)

        def finish() -> None:
            if run.rank != 0:
                return
            missing = [r for r in range(mapping.world_size) if not (tmp / f"rank{r}.safetensors").is_file()]
            if missing:
                raise FileNotFoundError(f"{tmp}: rank files missing after all processes finished: {missing}")
            conv.write_side_files(state["ckpt"], state["planner"], dtype, tmp)
            commit_directory(tmp, output)
            state["tmp"] = None

        run.phase("side files and rename", finish)
    finally:
        ckpt = state.get("ckpt")
        if ckpt is not None:
            ckpt.close()
    return output


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpirun -n N python -m build_engine.mpi_convert",
        description="NeMo reward checkpoint → TensorRT-LLM checkpoint, output ranks written in parallel by MPI "
        "processes (process i writes ranks r with r %% N == i). Without mpirun it runs as one process.",
    )
    conv.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    comm = world()
    try:
        out = mpi_convert(**conv.arguments(a), comm=comm)
    except MPIConversionError as e:
        if comm.Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return 1
    if comm.Get_rank() == 0:
        print(f"wrote {out} ({comm.Get_size()} MPI process(es))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
