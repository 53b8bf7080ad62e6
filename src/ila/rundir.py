"""The run directory: one object, :class:`RunDir`, owns its layout, its lock and its rules.

Every command writes only under its ``--output-dir``. A run directory holds
``run_state.json`` (the command, the completed stages, the model's fingerprint); files are
written atomically (:mod:`ila.files`), so a crash never leaves a half-written artifact that
looks complete.

- **Layout.** :class:`RunDir`'s properties name every file and folder ila writes; the names
  themselves live in :mod:`ila.run_files`. :data:`RUN_LAYOUT` lists, for each command, every
  name ila writes at every depth (Trainer checkpoints, adapters, nested runs included).
- **Overwrite.** ``--overwrite`` replaces only a directory that holds an ila run (or, for
  ``ila compare`` / ``ila report``, only ila's report files), and deletes only what ila
  wrote there. It refuses, before anything is loaded or deleted, the current, home and root
  directories, a symlink, a directory that contains the job's own inputs, and a directory
  holding any name ila does not write, at any depth (the refusal lists them).
- **Lock.** While a job writes a directory, its main process holds an exclusive
  ``fcntl.flock`` on ``.ila.lock`` there (pid and command line written into it); a second
  job into the same directory is refused. :meth:`RunDir.open` and :meth:`RunDir.locked`
  release it when their block ends (unless this process held it before the block began).
  The operating system releases it when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Union

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

import yaml

from ila.errors import IlaError, Parts, Setting, argument
from ila.files import atomic_write_json, file_mode, now, read_json, write_yaml
from ila.run_files import (
    BASE_MODEL_FILE,
    CHANGED_WEIGHTS_FILE,
    CHECKPOINT_STATE_FILE,
    COMPARISON_FILE,
    CONFIG_FILE,
    DATA_FILE,
    ENVIRONMENT_FILE,
    EVAL_FILE,
    EVAL_VARIANTS_FILE,
    EVAL_VARIANTS_FILE_BEFORE,
    FINETUNE_SUMMARY_FILE,
    GATE_TRAJECTORY_FILE,
    GENERATIONS_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    RUN_STATE_FILE,
    SCORES_FILE,
    SELECTION_FILE,
    STAGE_SUMMARY_FILE,
)
from ila.train.parallel import is_main_process

__all__ = [
    "LOCK_FILE",
    "REPORT_ENTRIES",
    "RUN_ENTRIES",
    "RUN_LAYOUT",
    "RUN_STATE_FILE",
    "RunDir",
    "check_output_dir",
    "check_writable",
    "collect_environment",
    "foreign_entries",
    "log_to_file",
    "prepare_output_dir",
    "read_run_state",
    "release_run_lock",
    "remove_ila_entries",
    "replaceable_layout",
    "require_resumable",
    "run_lock",
]

# -- the layout: every name ila writes, at every depth ---------------------------------------

# A layout maps a name pattern (fnmatch, one path segment) to what may be under it: None for
# a file, a nested layout for a folder, ANY for a folder of a library's own sharded format
# (FSDP's distributed checkpoints, DeepSpeed's global_step folders, TensorBoard's events).
ANY = "any"
Layout = Mapping[str, Union["Layout", str, None]]

_PEFT_ADAPTER = {
    "README.md": None,
    "adapter_config.json": None,
    "adapter_model.safetensors": None,
    "adapter_model.bin": None,
    BASE_MODEL_FILE: None,
}
# What save_pretrained of a model and its tokenizer writes (merged/, full-weight checkpoints).
_MODEL_FILES = {
    "config.json": None,
    "generation_config.json": None,
    "model.safetensors": None,
    "model-*-of-*.safetensors": None,
    "model.safetensors.index.json": None,
    "pytorch_model*.bin": None,
    "pytorch_model.bin.index.json": None,
    "tokenizer.json": None,
    "tokenizer_config.json": None,
    "special_tokens_map.json": None,
    "chat_template.jinja": None,
    "chat_template.json": None,
    "vocab.json": None,
    "merges.txt": None,
    "tokenizer.model": None,
    "added_tokens.json": None,
}
_CHECKPOINT = {
    **_PEFT_ADAPTER,
    **_MODEL_FILES,
    CHECKPOINT_STATE_FILE: None,
    "trainer_state.json": None,
    "training_args.bin": None,
    "optimizer.pt": None,
    "optimizer.bin": None,
    "scheduler.pt": None,
    "scaler.pt": None,
    "rng_state*.pth": None,
    "latest": None,
    "zero_to_fp32.py": None,
    "pytorch_model_fsdp_*": ANY,
    "optimizer_*": ANY,
    "global_step*": ANY,
}
_TRAINER = {"checkpoint-*": _CHECKPOINT}
_COMMON: dict[str, Any] = {
    RUN_STATE_FILE: None,
    CONFIG_FILE: None,
    ENVIRONMENT_FILE: None,
    LOG_FILE: None,
    METRICS_FILE: None,
    LOCK_FILE: None,
}
REPORT_ENTRIES: dict[str, frozenset[str]] = {
    "compare": frozenset(
        {COMPARISON_FILE, "comparison.md", "pairwise.png", "overlap_curves.png", "units.png"}
    ),
    "report": frozenset(
        {
            "report.html",
            "report.md",
            "ranking.md",
            "blocks.png",
            "heatmap.png",
            "stage1_loss.png",
            "stage2_gates.png",
        }
    ),
}
"""The files `ila compare` and `ila report` write into their output directory."""

_STAGE = {
    STAGE_SUMMARY_FILE: None,
    GATE_TRAJECTORY_FILE: None,
    "adapter": _PEFT_ADAPTER,
    "deltas": {"*.safetensors": None, "*.json": None},
    "trainer": _TRAINER,
    "tensorboard": ANY,
}
_SCORE: dict[str, Any] = {
    **_COMMON,
    DATA_FILE: None,
    SCORES_FILE: None,
    SELECTION_FILE: None,  # `ila select RUN` writes it beside the scores
    "stage1": _STAGE,
    "stage2": _STAGE,
    "report": dict.fromkeys(REPORT_ENTRIES["report"]),
}
_FINETUNE: dict[str, Any] = {
    **_COMMON,
    SELECTION_FILE: None,
    FINETUNE_SUMMARY_FILE: None,
    "trainer": _TRAINER,
    "tensorboard": ANY,
    "adapter": _PEFT_ADAPTER,
    "changed_weights": {CHANGED_WEIGHTS_FILE: None, BASE_MODEL_FILE: None},
    "merged": _MODEL_FILES,
}
_EVAL_FILES = {EVAL_FILE: None, GENERATIONS_FILE: None}
_SCORE["seeds"] = {"seed-*": _SCORE}
RUN_LAYOUT: dict[str, Layout] = {
    "score": _SCORE,
    "score-member": _SCORE,
    "run": {
        **_SCORE,
        "finetune": _FINETUNE,
        "finetune-all-units": _FINETUNE,
        "eval": {
            EVAL_VARIANTS_FILE: None,
            EVAL_VARIANTS_FILE_BEFORE: None,
            "*": {**_COMMON, **_EVAL_FILES},
        },
    },
    "finetune": _FINETUNE,
    "eval": {**_COMMON, **_EVAL_FILES},
}
"""Every name ila writes in a run directory of each command (the one in run_state.json)."""

RUN_ENTRIES: dict[str, frozenset[str]] = {
    command: frozenset(layout) for command, layout in RUN_LAYOUT.items()
}
"""The top-level names of :data:`RUN_LAYOUT` (patterns for eval variants and seeds)."""


def _match(layout: Layout, name: str) -> tuple[bool, Any]:
    """Whether ``name`` is one ila writes under ``layout``, and what may be under it."""
    if name in layout:
        return True, layout[name]
    for pattern, inner in layout.items():
        if fnmatch.fnmatchcase(name, pattern):
            return True, inner
    # An interrupted atomic write of a known entry: ``.<name>.<random>.tmp``.
    if name.startswith(".") and name.endswith(".tmp"):
        stem = name[1:].split(".")[0]
        if any(fnmatch.fnmatchcase(stem, p.split(".")[0]) for p in layout):
            return True, ANY
    return False, None


def foreign_entries(directory: Path, layout: Layout, *, limit: int = 50) -> list[str]:
    """The paths under ``directory`` (relative, at any depth) that ``layout`` does not list.

    A file where the layout has a folder (or the reverse) counts as foreign. The walk stops
    after ``limit`` findings. Symlinks are never followed.
    """
    found: list[str] = []
    stack: list[tuple[Path, Layout, str]] = [(Path(directory), layout, "")]
    while stack and len(found) < limit:
        folder, spec, prefix = stack.pop()
        for path in sorted(folder.iterdir()):
            relative = f"{prefix}{path.name}"
            known, inner = _match(spec, path.name)
            is_dir = path.is_dir() and not path.is_symlink()
            if (
                not known
                or (inner is None and is_dir)
                or (isinstance(inner, Mapping) and not is_dir)
            ):
                found.append(relative + ("/" if is_dir else ""))
            elif isinstance(inner, Mapping):
                stack.append((path, inner, relative + "/"))
    return found[:limit]


# -- the run directory ---------------------------------------------------------------------


def refuse_resume_with_overwrite(resume: bool, overwrite: bool) -> None:
    """``--resume`` continues a run, ``--overwrite`` replaces it: never both."""
    if resume and overwrite:
        raise IlaError(
            argument("resume"),
            " and ",
            argument("overwrite"),
            " contradict each other; pass one of them",
        )


@dataclass(frozen=True)
class RunDir:
    """A run directory: where each artifact of a run lives, and the run's lifecycle.

    Construct it on a path (nothing is read or written); :meth:`open` is the prologue and
    epilogue every job shares.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- layout (ila.run_files holds the names) --
    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def state_file(self) -> Path:
        return self.path / RUN_STATE_FILE

    @property
    def data(self) -> Path:
        return self.path / DATA_FILE

    @property
    def environment(self) -> Path:
        return self.path / ENVIRONMENT_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def scores(self) -> Path:
        return self.path / SCORES_FILE

    @property
    def selection(self) -> Path:
        return self.path / SELECTION_FILE

    @property
    def report(self) -> Path:
        return self.path / "report"

    def stage(self, number: int) -> Path:
        """``stage1/`` or ``stage2/`` (each with ``summary.json`` and ``trainer/``)."""
        return self.path / f"stage{number}"

    def stage_summary(self, number: int) -> Path:
        return self.stage(number) / STAGE_SUMMARY_FILE

    @property
    def gate_trajectory(self) -> Path:
        return self.stage(2) / GATE_TRAJECTORY_FILE

    @property
    def trainer(self) -> Path:
        """The Trainer's checkpoints of a fine-tune run."""
        return self.path / "trainer"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def changed_weights(self) -> Path:
        return self.path / "changed_weights"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def finetune_summary(self) -> Path:
        return self.path / FINETUNE_SUMMARY_FILE

    @property
    def finetune(self) -> RunDir:
        """`ila run`'s fine-tune of the selection (a finetune run directory)."""
        return RunDir(self.path / "finetune")

    @property
    def finetune_all_units(self) -> RunDir:
        """`ila run`'s all-units baseline (a finetune run directory)."""
        return RunDir(self.path / "finetune-all-units")

    @property
    def evaluation(self) -> Path:
        """`ila run`'s ``eval/`` (one folder per variant and ``variants.json``)."""
        return self.path / "eval"

    def seed(self, seed: int) -> RunDir:
        """An ensemble member of ``--seeds`` (a score run directory)."""
        return RunDir(self.path / "seeds" / f"seed-{seed}")

    # -- state --
    def state(self) -> dict[str, Any] | None:
        """``run_state.json``, or None where the directory holds no run."""
        return read_run_state(self.path)

    def completed(self, stage: str) -> bool:
        """Whether ``stage`` finished (its artifacts are complete)."""
        return stage in (self.state() or {}).get("completed_stages", [])

    def mark(self, stage: str) -> None:
        """Record that ``stage`` finished and its artifacts are complete."""
        state = self.state() or {"completed_stages": []}
        if stage not in state["completed_stages"]:
            state["completed_stages"].append(stage)
        state["updated_at"] = now()
        atomic_write_json(self.state_file, state)

    def record_model(self, fingerprint: Any) -> None:
        """Record which model the run uses (an ila.model.identity fingerprint), for
        ``--resume`` to check."""
        state = self.state() or {"completed_stages": []}
        state["model_fingerprint"] = fingerprint.to_dict()
        atomic_write_json(self.state_file, state)

    def require_same_model(self, fingerprint: Any) -> None:
        """``--resume``: refuse to continue a run with another model than it started with.

        Runs recorded before ila wrote fingerprints are not checked.
        """
        from ila.model.identity import check_same_model

        check_same_model(
            (self.state() or {}).get("model_fingerprint"),
            fingerprint,
            what=(argument("resume"), f": the run in {self.path}"),
            hint="resume with the model the run started with, or start a new run",
            allowable=False,  # a run continues on its own model; no flag accepts another
        )

    # -- lifecycle --
    def check(
        self,
        resolved: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        inputs: Iterable[str | Path | None] = (),
        finished_stage: str | None = None,
    ) -> None:
        """Everything about the directory that can be refused before a model is loaded:
        ``--resume`` with ``--overwrite``; ``--resume`` of a run that is not resumable with
        these settings (:func:`require_resumable`); a new run into a directory it may not
        use (:func:`check_output_dir`)."""
        refuse_resume_with_overwrite(resume, overwrite)
        if resume:
            require_resumable(self.path, resolved, finished_stage=finished_stage)
        elif is_main_process():
            check_output_dir(self.path, overwrite=overwrite, inputs=inputs)

    @contextlib.contextmanager
    def open(
        self,
        command: str,
        resolved: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        inputs: Iterable[str | Path | None] = (),
        environment: Mapping[str, Any] | None = None,
    ) -> Iterator[bool]:
        """The lifecycle every job shares; yields whether this is the main process.

        The main process prepares and locks the directory (:func:`prepare_output_dir`:
        every check again under the lock, then the old run's files deleted for
        ``overwrite``), logs into it for the duration and, for a new run, writes
        ``config.yaml`` (``resolved``) and ``environment.json`` (with ``environment``).
        The lock is released when the block ends, however it ends, unless this process
        held it already (an enclosing job). Other ranks of a launch only run the block.
        """
        main = is_main_process()
        with self.lock_scope():
            if main:
                prepare_output_dir(
                    self.path, command=command, overwrite=overwrite, resume=resume, inputs=inputs
                )
            with log_to_file(self.path) if main else contextlib.nullcontext():
                if main and not resume:
                    write_yaml(self.config, dict(resolved))
                    write_environment(self.path, environment)
                yield main

    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[RunDir]:
        """Hold the directory's lock for the block (the directory is created if missing).

        For writers of single files and report folders (`ila select`, `ila compare`,
        `ila report`), which check the directory again under the lock.
        """
        with self.lock_scope():
            if is_main_process():
                try:
                    self.path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise IlaError(
                        argument("output_dir"), f" {self.path}: cannot create it ({exc.strerror})"
                    ) from exc
            self.lock(command)
            yield self

    def lock(self, command: str) -> None:
        """Take the directory's lock now (main process; a no-op if this process holds it).
        Use inside :meth:`lock_scope`, which releases it."""
        if is_main_process():
            run_lock(self.path, command)

    @contextlib.contextmanager
    def lock_scope(self) -> Iterator[None]:
        """A block at whose end this process releases the directory's lock, if it took it
        inside the block. Scopes nest: only the outermost one releases (`ila run` holds
        its directory across scoring, selection, fine-tunes and evaluation)."""
        key = self.path.resolve()
        if key not in _SCOPES:
            _SCOPES[key] = [0, _holds(key)]
        _SCOPES[key][0] += 1
        try:
            yield
        finally:
            _SCOPES[key][0] -= 1
            if not _SCOPES[key][0]:
                held_before = _SCOPES.pop(key)[1]
                if not held_before:
                    release_run_lock(key)


def read_run_state(output_dir: Path) -> dict[str, Any] | None:
    """Return the run state of ``output_dir`` or ``None`` when it holds no run."""
    state = Path(output_dir) / RUN_STATE_FILE
    return read_json(state) if state.is_file() else None


# -- what a job may write, and what --overwrite may replace --------------------------------


def check_output_dir(
    output_dir: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path | None] = (),
    report: str | None = None,
    resumable: bool = True,
) -> None:
    """Refuse, before any work, an output dir this job may not write (see prepare_output_dir).

    Refused: a file; a directory whose parent cannot be written; a directory another job
    holds (its lock); a directory that holds files, unless ``overwrite`` or ``resume``; and
    with ``overwrite``, any directory :func:`_check_overwrite` refuses. ``inputs`` are the
    job's input paths (model, data, scores, adapter); ``report`` names the report command
    (``compare`` or ``report``) for directories without a run_state.json; the message for
    an occupied directory offers ``--resume`` only to a ``resumable`` job (not eval, compare,
    report).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise IlaError(argument("output_dir"), f" {output_dir} is a file; pass a directory")
    check_writable(output_dir)
    _refuse_if_locked(output_dir)
    occupied = bool(_entries(output_dir))
    if occupied and not (overwrite or resume):
        resume_hint = (argument("resume"), " to continue, ") if resumable and report is None else ()
        raise IlaError(
            argument("output_dir"),
            f" {output_dir} already holds files; pass ",
            argument("overwrite"),
            " to replace them, ",
            *resume_hint,
            "or choose another directory",
        )
    if occupied and overwrite:
        _check_overwrite(output_dir, inputs=inputs, report=report)


def _entries(output_dir: Path) -> list[Path]:
    """The entries of ``output_dir`` other than its lock file (none if it does not exist)."""
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.name != LOCK_FILE)


def check_writable(output_dir: Path) -> None:
    """Refuse an output dir that cannot be created or written, before the model is loaded:
    it, or the nearest of its parents that exists, must be a writable directory."""
    output_dir = Path(output_dir)
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == output_dir else f"lies under the file {existing}"
        raise IlaError(
            argument("output_dir"), f" {output_dir} {what}, not a directory; pass a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "it" if existing == output_dir else f"its parent {existing}"
        raise IlaError(
            argument("output_dir"),
            f" {output_dir}: cannot write in {what} (read-only or no permission); "
            "choose a writable directory",
        )


def replaceable_layout(output_dir: Path, *, report: str | None = None) -> Layout:
    """What ``--overwrite`` may delete in ``output_dir``: the layout of the ila run there,
    or (for ``report``, ``compare`` or ``report``) that command's files; an empty folder
    has nothing to delete. Refuses a folder that holds anything else (see
    :func:`check_output_dir`)."""
    if not _entries(Path(output_dir)):
        return {}
    return _layout_of(Path(output_dir), report)


def _layout_of(output_dir: Path, report: str | None) -> Layout:
    """Every name ila writes in ``output_dir``; refuse a directory that holds no ila output."""
    state_file = output_dir / RUN_STATE_FILE
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            state = None
        command = state.get("command") if isinstance(state, dict) else None
        if command not in RUN_LAYOUT:
            raise IlaError(
                argument("overwrite"),
                f": {state_file} is not a run state ila wrote (command {command!r}); "
                "delete the directory yourself if it is no longer needed, or choose another",
            )
        return RUN_LAYOUT[command]
    if report is not None:
        layout = {**dict.fromkeys(REPORT_ENTRIES[report]), LOCK_FILE: None}
        if not foreign_entries(output_dir, layout, limit=1):
            return layout
    raise IlaError(
        argument("overwrite"),
        f": {output_dir} holds files but no {RUN_STATE_FILE}, so it is not an ila "
        "run directory; ila replaces only its own runs: choose another ",
        argument("output_dir"),
        " (or empty this one yourself)",
    )


def _special_directory(resolved: Path) -> str | None:
    """What makes ``resolved`` a directory ila never replaces, if anything does."""
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if resolved == resolved.parent:
        return "a filesystem root"
    if resolved == home:
        return "your home directory"
    if resolved == cwd:
        return "the current directory"
    if resolved in cwd.parents:
        return "a directory that contains the current directory"
    return None


def _check_overwrite(
    output_dir: Path, *, inputs: Iterable[str | Path | None], report: str | None
) -> None:
    """Refuse to replace a directory whose deletion could lose anything ila did not write."""
    if output_dir.is_symlink():
        raise IlaError(
            argument("overwrite"),
            ": ",
            argument("output_dir"),
            f" {output_dir} is a symbolic link; pass the directory it "
            f"points to ({output_dir.resolve()}) or a new directory",
        )
    resolved = output_dir.resolve()
    special = _special_directory(resolved)
    if special is not None:
        raise IlaError(
            argument("overwrite"),
            ": ",
            argument("output_dir"),
            f" {output_dir} is {special}; ila never replaces it: "
            "pass a dedicated run directory such as runs/my-run",
        )
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).expanduser()
        if not path.exists():
            continue  # a hub id, a preset name: not a file here
        source = path.resolve()
        if source == resolved or resolved in source.parents:
            raise IlaError(
                argument("overwrite"),
                ": ",
                argument("output_dir"),
                f" {output_dir} contains the input {item}; replacing "
                "the run would delete it: move the input out or choose another ",
                argument("output_dir"),
            )
    unknown = foreign_entries(output_dir, _layout_of(output_dir, report))
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise IlaError(
            argument("overwrite"),
            f": {output_dir} holds files ila did not write ({shown}); move them out "
            "or choose another ",
            argument("output_dir"),
        )


def remove_ila_entries(output_dir: Path, layout: Layout, *, keep: str | None = None) -> None:
    """Delete the top-level entries of ``layout`` in ``output_dir`` (never the lock, nor
    the entry named ``keep``). Call only under the directory's lock, after
    :func:`check_output_dir` found nothing foreign there.
    """
    for path in _entries(output_dir):
        if path.name == keep or not _match(layout, path.name)[0]:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def prepare_output_dir(
    output_dir: Path,
    *,
    command: str,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Create ``output_dir`` for a new run of ``command`` and lock it for this process.

    A directory that already holds files is refused unless ``overwrite`` (delete what ila
    wrote there and start again) or ``resume`` (continue the run recorded there) is given.
    Every check is made again under the lock, before anything is deleted.
    """
    output_dir = Path(output_dir)
    inputs = list(inputs)
    checks = {"overwrite": overwrite, "resume": resume, "inputs": inputs}
    checks["resumable"] = command != "eval"  # an evaluation is run again, not resumed
    check_output_dir(output_dir, **checks)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IlaError(
            argument("output_dir"), f" {output_dir}: cannot create it ({exc.strerror})"
        ) from exc
    run_lock(output_dir, command)
    check_output_dir(output_dir, **checks)
    occupied = bool(_entries(output_dir))
    if occupied and resume:
        state = read_run_state(output_dir)
        if state is None:
            raise IlaError(
                argument("resume"), f": {output_dir} holds no {RUN_STATE_FILE}; nothing to resume"
            )
        if state.get("command") != command:
            raise IlaError(
                argument("resume"),
                f": {output_dir} holds an 'ila {state.get('command')}' run, not 'ila {command}'",
            )
        return output_dir
    if occupied:
        remove_ila_entries(output_dir, _layout_of(output_dir, None))
    atomic_write_json(
        output_dir / RUN_STATE_FILE,
        {"command": command, "completed_stages": [], "started_at": now()},
    )
    return output_dir


def require_resumable(
    output_dir: Path, resolved: Mapping[str, Any], *, finished_stage: str | None
) -> dict[str, Any]:
    """Check that ``--resume`` can continue the run in ``output_dir``; return its run state.

    Refused: a directory without a run, a run that completed ``finished_stage`` (nothing
    left to do), and a run started with other settings than ``resolved`` (the config the
    command would write): the first setting that differs is named.
    """
    output_dir = Path(output_dir)
    state = read_run_state(output_dir)
    if state is None:
        raise IlaError(
            argument("resume"), f": {output_dir} holds no {RUN_STATE_FILE}; nothing to resume"
        )
    if is_main_process():  # the other ranks of a launch never write (nor lock) the run
        check_writable(output_dir)
        _refuse_if_locked(output_dir)
    if finished_stage is not None and finished_stage in state.get("completed_stages", []):
        raise IlaError(
            argument("resume"),
            f": the run in {output_dir} has finished; nothing to resume (pass ",
            argument("overwrite"),
            " to run it again)",
        )
    recorded_path = output_dir / CONFIG_FILE
    if not recorded_path.is_file():
        raise IlaError(
            argument("resume"),
            f": {recorded_path} not found; the run stopped before it began, so start "
            "it again with ",
            argument("overwrite"),
        )
    recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8")) or {}
    for key, was, now_ in _differences(recorded, dict(resolved)):
        raise IlaError(
            argument("resume"),
            ": ",
            _setting_of(key),
            f" is {now_!r} here but {was!r} in {recorded_path}; "
            "resume with the settings the run started with, or start a new run",
        )
    return state


def _differences(
    recorded: Mapping[str, Any], resolved: Mapping[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Any, Any]]:
    """(key, recorded value, value now) of each setting that differs. A setting the
    recorded config lacks (added to ila after the run began) differs only when it is now
    set away from its default: at its default it does what the run did."""
    from ila.config import setting_default

    for key in list(resolved) + [k for k in recorded if k not in resolved]:
        was, now_ = recorded.get(key), resolved.get(key)
        if isinstance(was, Mapping) and isinstance(now_, Mapping):
            yield from _differences(was, now_, f"{prefix}{key}.")
        elif key not in recorded and now_ == setting_default(f"{prefix}{key}"):
            continue
        elif was != now_:
            yield f"{prefix}{key}", was, now_


def _setting_of(key: str) -> Setting:
    """The setting a key of a recorded config.yaml holds (``stage1.max_steps``; ``method``
    is the scorer of a score run)."""
    from ila.config import setting

    section, _, name = key.partition(".")
    if name and "." not in name:
        return setting(section, name)
    return argument("scorer" if key == "method" else key.replace(".", "_"))


# -- the run lock --------------------------------------------------------------------------

# Locks this process holds: resolved run directory -> open lock file descriptor. flock locks
# belong to an open file description, so a second open() in this process would conflict
# with the first: the same directory is locked once and shared.
_HELD_LOCKS: dict[Path, int] = {}
# Open lock scopes (RunDir.lock_scope) per directory: [depth, whether the lock was held
# before the outermost scope began].
_SCOPES: dict[Path, list] = {}


def _holds(output_dir: Path) -> bool:
    """Whether this process holds the lock of ``output_dir``."""
    return Path(output_dir).resolve() in _HELD_LOCKS


def run_lock(output_dir: Path, command: str) -> None:
    """Take the exclusive lock of ``output_dir`` (no-op if this process holds it already).

    The lock file records this process's pid and command line, which a refused job names.
    It is released by :func:`release_run_lock` (at the end of :meth:`RunDir.open` or
    :meth:`RunDir.locked`), or by the operating system when the process exits.
    """
    if fcntl is None:
        return
    key = Path(output_dir).resolve()
    if key in _HELD_LOCKS:
        return
    path = key / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before us deletes the file as it lets go: the lock counts only if
            # the file we locked is still the one at ``path``.
            current = os.stat(path).st_ino if path.exists() else None
        except BlockingIOError:
            os.close(fd)
            raise IlaError(*_locked_message(Path(output_dir), path)) from None
        except BaseException:
            os.close(fd)
            raise
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "command": command, "argv": sys.argv, "started_at": now()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    _HELD_LOCKS[key] = fd


def release_run_lock(output_dir: Path) -> None:
    """Release the lock this process holds on ``output_dir`` (if any)."""
    key = Path(output_dir).resolve()
    fd = _HELD_LOCKS.pop(key, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        (key / LOCK_FILE).unlink()  # while still holding it: see run_lock
    os.close(fd)  # closing the only descriptor releases the flock


def _refuse_if_locked(output_dir: Path) -> None:
    """Refuse at once a directory whose lock another live process holds."""
    path = output_dir / LOCK_FILE
    if fcntl is None or not path.is_file() or _holds(output_dir):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise IlaError(*_locked_message(output_dir, path)) from None
    finally:
        os.close(fd)  # also releases the probe's lock when it was taken


def _read_holder(path: Path, attempts: int = 20) -> dict[str, Any]:
    """The lock holder's record; a holder that has just taken the lock may still be
    writing it, so an empty or partial file is read again for up to about a second."""
    for attempt in range(attempts):
        try:
            holder = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        if attempt + 1 < attempts:
            time.sleep(0.05)
    return {}


def _locked_message(output_dir: Path, path: Path) -> Parts:
    holder = _read_holder(path)
    who = f"pid {holder.get('pid', 'unknown')}"
    if holder.get("command"):
        who += f", ila {holder['command']}"
    argv = [str(a) for a in holder.get("argv") or []]
    if len(argv) > 1:
        shown = " ".join([Path(argv[0]).name, *argv[1:]])
        who += f", started as '{shown if len(shown) <= 160 else shown[:157] + '...'}'"
    return (
        argument("output_dir"),
        f" {output_dir} is in use by another ila job ({who}); wait for it to "
        "finish or choose another directory",
    )


# -- the log and the environment of a run --------------------------------------------------


@contextlib.contextmanager
def log_to_file(output_dir: Path, name: str = LOG_FILE) -> Iterator[Path]:
    """Copy the ``ila`` loggers' records (INFO and above) into ``output_dir/name``."""
    path = Path(output_dir) / name
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ila")
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


_TRACKED_PACKAGES = (
    "ila",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "gguf",
    "numpy",
)


def collect_environment() -> dict[str, Any]:
    """Library versions, Python, platform, git sha and devices, for reproducibility."""
    versions: dict[str, str | None] = {}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git_sha": _git_sha(),
        "argv": sys.argv,
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
    }
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["cuda_devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    return env


def write_environment(output_dir: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``environment.json`` into the run directory, with ``extra`` facts of the run
    (e.g. the training precision chosen for this machine)."""
    atomic_write_json(
        Path(output_dir) / ENVIRONMENT_FILE, {**collect_environment(), **(extra or {})}
    )


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
