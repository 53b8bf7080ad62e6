"""Where `ila compare` and `ila report` write: their own folder, filled all or nothing.

The folder is locked for the whole write (ila.rundir.RunDir.locked) and checked again
under the lock, so a job that starts writing the same folder meanwhile is either refused
or refuses this one: neither deletes the other's files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ila.errors import IlaError, argument
from ila.rundir import REPORT_ENTRIES, RunDir, check_output_dir, replaceable_layout

__all__ = ["report_directory"]


@contextlib.contextmanager
def report_directory(
    output_dir: Path, *, inputs: Sequence[Path], overwrite: bool = False, command: str = "report"
) -> Iterator[Path]:
    """Yield a temporary folder whose files replace those of ``output_dir`` only if the
    block succeeds.

    Refuses an ``output_dir`` that holds files (unless ``overwrite``) and one that is, or
    contains, one of the ``inputs``: replacing it would delete the runs being reported.
    ``overwrite`` replaces only ila's own files: the report files of ``command``
    (``compare`` or ``report``, ila.rundir.REPORT_ENTRIES) or an ila run.
    """
    out = Path(output_dir)
    resolved = out.resolve()
    for path in inputs:
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents:
            raise IlaError(
                argument("output_dir"),
                f" {output_dir} would replace the input {path}; choose a directory "
                "outside it (e.g. RUN/report or a new one)",
            )
    if out.is_symlink():
        raise IlaError(
            argument("output_dir"),
            f" {output_dir} is a symbolic link; pass the directory it points to "
            f"({resolved}) or a new directory",
        )
    check_output_dir(out, overwrite=overwrite, inputs=inputs, report=command)
    created = not out.exists()
    try:
        with RunDir(out).locked(command):
            check_output_dir(out, overwrite=overwrite, inputs=inputs, report=command)
            layout = replaceable_layout(out, report=command)
            first = sorted(REPORT_ENTRIES[command])[0]
            tmp = Path(tempfile.mkdtemp(prefix=f".{first}.", suffix=".tmp", dir=out))
            try:
                yield tmp
                _swap_in(out, tmp, layout)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing half-written: the folder this call created goes too
        raise


def _swap_in(out: Path, tmp: Path, layout) -> None:
    """Delete ila's old files in ``out`` (``layout``), then move the new ones in; the HTML
    page and markdown last, so a folder without them is visibly incomplete."""
    from ila.rundir import remove_ila_entries

    remove_ila_entries(out, layout, keep=tmp.name)
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n.endswith((".html", ".md")))
    for name in names:
        os.replace(tmp / name, out / name)
