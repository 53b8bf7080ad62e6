"""Where `ila compare` and `ila report` write: a fresh directory, filled all or nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from ila.errors import IlaError
from ila.rundir import atomic_directory, check_output_dir

__all__ = ["report_directory"]


@contextlib.contextmanager
def report_directory(
    output_dir: Path, *, inputs: Sequence[Path], overwrite: bool = False, command: str = "report"
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``output_dir`` only if the block succeeds.

    Refuses an ``output_dir`` that holds files (unless ``overwrite``) and one that is, or
    contains, one of the ``inputs``: replacing it would delete the runs being reported.
    ``overwrite`` replaces only a directory of ila's own files: the report files of
    ``command`` (``compare`` or ``report``, see ila.rundir.REPORT_ENTRIES) or an ila run.
    """
    out = Path(output_dir).resolve()
    for path in inputs:
        source = Path(path).resolve()
        if source == out or out in source.parents:
            raise IlaError(
                f"--output-dir {output_dir} would replace the input {path}; choose a directory "
                "outside it (e.g. RUN/report or a new one)"
            )
    if Path(output_dir).is_symlink():  # the directory is replaced as a whole, link and all
        raise IlaError(
            f"--output-dir {output_dir} is a symbolic link; pass the directory it points to "
            f"({Path(output_dir).resolve()}) or a new directory"
        )
    check_output_dir(Path(output_dir), overwrite=overwrite, inputs=inputs, report=command)
    with atomic_directory(Path(output_dir)) as tmp:
        yield tmp
