"""pytest plugin of the prepared GPU check: keep only the tests that need CUDA.

A test needs CUDA when one of its ``skipif`` marks (its own or its module's) gives a reason
that names CUDA or a GPU, e.g. "needs a CUDA GPU and bitsandbytes (a 4-bit base)" or
"needs 2 CUDA GPUs". Every other collected test is deselected. On a machine without
CUDA the kept tests skip, with their reasons, which is what the CPU rehearsal shows;
on a GPU machine they run (the 2-GPU tests still skip on one GPU).

    python -m pytest -p device_check_select tests/model/test_quantized.py ...

(with scripts/ on the path)
"""

from __future__ import annotations

import re
from typing import Any

NEEDS_CUDA = re.compile(r"\b(cuda|gpus?)\b", re.IGNORECASE)


def needs_cuda(item: Any) -> bool:
    """True when a ``skipif`` mark of ``item`` names CUDA or a GPU in its reason."""
    for mark in item.iter_markers(name="skipif"):
        if NEEDS_CUDA.search(str(mark.kwargs.get("reason", ""))):
            return True
    return False


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Deselect every test that does not need CUDA."""
    kept = [item for item in items if needs_cuda(item)]
    dropped = [item for item in items if not needs_cuda(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
