"""What the prepared GPU check reads inside a child process (docs/distributed.md).

Two commands, each writing one JSON file:

- ``environment --json FILE [--require-cuda]``: Python, torch, CUDA, the GPUs and the
  versions of ila's packages; exit 1 (after writing the file) when a package ila needs is
  missing, or with ``--require-cuda`` when torch sees no CUDA device;
- ``measure --json FILE -- ILA_ARGS...``: runs ``ila ILA_ARGS`` (the real command line,
  in this process) and records its exit code, wall time and the process's peak memory:
  ``torch.cuda.max_memory_allocated()`` on a CUDA machine, the peak resident set size on
  a CPU one. Exits with ila's exit code.

    python scripts/device_check_probe.py measure --json peak.json -- score --model M ...
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

# What ila imports (pyproject.toml) and what the check's steps use; "optional" ones are
# reported but not required (bitsandbytes: only the 4-bit tests; trl: only --objective dpo).
REQUIRED = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "safetensors",
    "gguf",
    "yaml",
    "matplotlib",
    "numpy",
    "tokenizers",
    "pytest",
)
DISTRIBUTIONS = {"yaml": "PyYAML"}
OPTIONAL = ("trl", "bitsandbytes", "huggingface_hub", "pyarrow", "fsspec", "dill", "multiprocess")


def _version(module: str) -> str | None:
    """The installed version of ``module`` (None when it cannot be imported)."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def environment() -> dict[str, Any]:
    """The machine and the package versions; ``missing`` names the required packages absent."""
    import torch

    import ila

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    props = torch.cuda.get_device_properties(0) if gpus else None
    packages = {name: _version(name) for name in (*REQUIRED, *OPTIONAL)}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu_count": gpus,
        "gpu_name": props.name if props is not None else None,
        "gpu_memory_bytes": props.total_memory if props is not None else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "ila": ila.__version__,
        "ila_path": str(Path(ila.__file__).parent),
        "packages": packages,
        "missing": [name for name in REQUIRED if packages[name] is None],
    }


def measure(ila_args: list[str]) -> dict[str, Any]:
    """Run the ila command line ``ila_args`` here; its exit code, wall time and peak memory."""
    import torch

    from ila.cli import main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    rc = main(ila_args)
    seconds = time.perf_counter() - start
    return {
        "rc": rc,
        "seconds": seconds,
        "memory_kind": "cuda_max_memory_allocated" if cuda else "peak_rss",
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
    }


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("environment", help="the machine and the package versions")
    env.add_argument("--json", type=Path, required=True)
    env.add_argument("--require-cuda", action="store_true", help="exit 1 without CUDA")
    run = sub.add_parser("measure", help="run an ila command and record its peak memory")
    run.add_argument("--json", type=Path, required=True)
    run.add_argument("ila_args", nargs=argparse.REMAINDER, help="-- then ila's arguments")
    args = parser.parse_args(argv)
    if args.command == "environment":
        found = environment()
        args.json.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
        if found["missing"]:
            print(f"missing packages: {', '.join(found['missing'])}", file=sys.stderr)
            return 1
        if args.require_cuda and not found["gpu_count"]:
            print("torch sees no CUDA device (--dry-run rehearses on a CPU)", file=sys.stderr)
            return 1
        return 0
    ila_args = args.ila_args[1:] if args.ila_args[:1] == ["--"] else args.ila_args
    if not ila_args:
        print("measure: pass the ila command after --", file=sys.stderr)
        return 2
    found = measure(ila_args)
    args.json.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    return int(found["rc"])


if __name__ == "__main__":
    sys.exit(main())
