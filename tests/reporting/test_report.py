"""`ila report`: a self-contained HTML page and markdown from a finished run's files.

Two tiny real runs through the CLI (an `ila run` with fine-tunes and evaluation, and an
`ila score`) feed every test; the page is opened in a real headless Chromium.
"""

import base64
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

from ila.cli import main
from ila.core.scores import LayerScores
from ila.reporting.figures import pyplot
from ila.reporting.plots import heatmap_figure
from ila.reporting.run_record import load_run_record
from ila.reporting.run_report import reproduce_command, selection_marks

TINY = [
    "--max-length", "64",
    "--limit", "40",
    "--stage1-max-steps", "4",
    "--stage1-min-steps", "2",
    "--stage2-steps", "4",
]  # fmt: skip
RUN_EXTRA = [
    "--max-steps", "2",
    "--tune-top-fraction", "0.25",
    "--eval-generate-examples", "2",
    "--eval-max-new-tokens", "4",
]  # fmt: skip
SECTIONS = ["summary", "stage1", "stage2", "units", "stability", "data", "versions", "reproduce"]
RUN_SECTIONS = ["selection", "finetune", "evaluation"]


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    """A tiny `ila run` (score, select, fine-tunes, evaluation) with TensorBoard logging."""
    out = tmp_path_factory.mktemp("full") / "run"
    argv = ["run", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY, *RUN_EXTRA]
    cwd = tmp_path_factory.mktemp("cwd")
    here = os.getcwd()
    os.chdir(cwd)  # nothing may be written to the working directory
    try:
        assert main([*argv, "--report-to", "tensorboard"]) == 0
    finally:
        os.chdir(here)
    assert list(cwd.iterdir()) == []
    return out


@pytest.fixture(scope="module")
def score_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "run"
    assert main(["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def full_report(full_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    assert main(["report", str(full_run), "--output-dir", str(out)]) == 0
    return out


def test_report_files_and_self_contained_html(full_run, full_report):
    names = sorted(p.name for p in full_report.iterdir())
    assert names == [
        "blocks.png",
        "heatmap.png",
        "ranking.md",
        "report.html",
        "report.md",
        "stage1_loss.png",
        "stage2_gates.png",
    ]
    page = (full_report / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4
    embedded = set()
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        embedded.add(base64.b64decode(src.split(",", 1)[1]))
    assert embedded == {(full_report / n).read_bytes() for n in names if n.endswith(".png")}
    for anchor in SECTIONS + RUN_SECTIONS:
        assert f'<section id="{anchor}">' in page


def test_report_content_comes_from_the_run_files(full_run, full_report):
    page = (full_report / "report.html").read_text()
    markdown = (full_report / "report.md").read_text()
    scores = LayerScores.load(full_run)
    stage1 = json.loads((full_run / "stage1" / "summary.json").read_text())
    assert f"T = {stage1['T']} of at most 4 steps" in markdown
    top = scores.ranking()[0]
    assert f"| 1 | `{top}` |" in markdown and f"<code>{top}</code>" in page
    selection = json.loads((full_run / "selection.json").read_text())
    assert all(f"`{name}`" in markdown for name in selection["selected"])
    variants = json.loads((full_run / "eval" / "variants.json").read_text())["variants"]
    assert "| metric | " + " | ".join(variants) + " |" in markdown
    loss_row = "| loss | " + " | ".join(f"{v['loss']:.4g}" for v in variants.values()) + " |"
    assert loss_row in markdown
    trainable = json.loads((full_run / "finetune" / "finetune_summary.json").read_text())
    assert f"| trainable_parameters | {trainable['trainable_parameters']:,} |" in markdown
    for image in ("stage1_loss.png", "stage2_gates.png", "heatmap.png", "blocks.png"):
        assert f"]({image})" in markdown
    assert markdown.count("\n## ") == len(SECTIONS + RUN_SECTIONS)
    assert (full_report / "ranking.md").read_text().count("| `layers.") == len(scores.units)


def test_report_figures_mark_the_runs_selection_and_name_their_scale(full_run, full_report):
    record = load_run_record(full_run)
    selection = json.loads((full_run / "selection.json").read_text())
    marks = selection_marks(record)
    assert marks.kind == "tuned" and marks.names == set(selection["selected"])
    n, k = len(record.scores.units), len(selection["selected"])
    assert marks.label == f"tuned: top 25% ({k} of {n} units)"
    figure = heatmap_figure(record.scores, marks)
    outlined = {p.get_gid().split(":", 2)[2] for p in figure.axes[0].patches}
    assert outlined == set(selection["selected"])
    low = min(u.importance for u in record.scores.units)
    assert figure.axes[0].images[0].norm.vmin == pytest.approx(low)
    pyplot().close(figure)
    markdown = (full_report / "report.md").read_text()
    captions = [line for line in markdown.splitlines() if line.startswith("![")]
    heatmap = next(c for c in captions if c.endswith("(heatmap.png)"))
    blocks = next(c for c in captions if c.endswith("(blocks.png)"))
    for caption in (heatmap, blocks):
        assert "(lowest)" in caption and "(highest), not to 0-1" in caption
        assert f"tuned: top 25% ({k} of {n} units)" in caption


def test_report_of_a_score_run_has_no_run_sections(score_run, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(score_run), "--output-dir", str(out)]) == 0
    assert "Marked" not in (out / "report.md").read_text()  # no selection to mark
    page = (out / "report.html").read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page
    for anchor in RUN_SECTIONS:
        assert f'id="{anchor}"' not in page


def test_reproduce_command_reproduces_the_run(score_run, tmp_path):
    record = load_run_record(score_run)
    command = reproduce_command(record, output_dir=str(tmp_path / "again"))
    assert command.startswith(f"ila score --config {score_run}/config.yaml --scorer ila ")
    argv = shlex.split(command)
    assert argv[0] == "ila" and main(argv[1:]) == 0
    first, again = LayerScores.load(score_run), LayerScores.load(tmp_path / "again")
    assert again.ranking() == first.ranking()
    assert [u.raw for u in again.units] == pytest.approx([u.raw for u in first.units], abs=1e-5)


def test_config_method_must_match_the_command(score_run, tmp_path, capsys):
    argv = ["score", "--config", str(score_run / "config.yaml"), "--scorer", "snr"]
    assert main([*argv, "--output-dir", str(tmp_path / "x")]) == 2
    assert "records method 'ila' but this command scores with 'snr'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _copy_run(run, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("adapter", "trainer"))
    return copy


def test_refusals_are_one_line_and_write_nothing(score_run, full_run, tmp_path, capsys):
    unfinished = _copy_run(score_run, tmp_path, "unfinished")
    state = json.loads((unfinished / "run_state.json").read_text())
    (unfinished / "run_state.json").write_text(json.dumps({**state, "completed_stages": []}))
    bad_eval = _copy_run(full_run, tmp_path, "bad-eval")
    (bad_eval / "eval" / "variants.json").write_text('{"schema_version": 7, "variants": {}}')
    no_state = tmp_path / "no-state"
    no_state.mkdir()
    out = tmp_path / "out"
    cases = [
        (tmp_path / "missing", "no such run directory"),
        (no_state, "holds no run_state.json"),
        (unfinished, "is not a finished run"),
        (full_run / "finetune", "holds an 'ila finetune' run"),
        (bad_eval, "schema_version 7 is not supported"),
    ]
    for run, message in cases:
        assert main(["report", str(run), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ila: error:") and message in err[0], err
        assert not out.exists()
    assert main(["report", str(score_run), "--output-dir", str(score_run), "--overwrite"]) == 2
    assert "would replace the input" in capsys.readouterr().err
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["report", str(score_run), "--output-dir", str(out)]) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep").is_file()


def test_compare_two_real_runs(full_run, score_run, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(full_run), str(score_run), "--output-dir", str(out)]) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert data["num_units"] == 28 and len(data["pairs"]) == 1
    a, b = LayerScores.load(full_run), LayerScores.load(score_run)
    top = len(set(a.top(0.25)) & set(b.top(0.25))) / len(set(a.top(0.25)) | set(b.top(0.25)))
    assert data["pairs"][0]["jaccard"]["0.25"] == pytest.approx(top)


def _chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must run `make browser` first")
        pytest.skip("chromium is not installed (make browser installs Debian's)")
    return path


def test_report_renders_in_a_headless_browser(full_report, tmp_path):
    chromium = _chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (full_report / "report.html").as_uri()
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for anchor in SECTIONS + RUN_SECTIONS:
        assert f'<section id="{anchor}">' in dom.stdout
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', dom.stdout)) == 4
    shot = tmp_path / "page.png"
    result = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,3000", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 0.05  # not a blank page
    # The figures were decoded and drawn: strongly coloured pixels (viridis, plot lines)
    # cover a large area; text and table borders alone are grey or one blue.
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3
    assert colourful.sum() > 50_000


def test_report_to_tensorboard_writes_events_for_every_training_stage(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    for stage, folder in [
        ("stage1", full_run / "stage1"),
        ("stage2", full_run / "stage2"),
        ("finetune", full_run / "finetune"),
    ]:
        events = EventAccumulator(str(folder / "tensorboard"))
        events.Reload()
        losses = [e.value for e in events.Scalars("train/loss")]
        if stage == "finetune":
            rows = (folder / "metrics.jsonl").read_text().splitlines()
            expected = [json.loads(line)["loss"] for line in rows]
        else:
            expected = [r["loss"] for r in metrics if r["stage"] == stage]
        assert losses == pytest.approx(expected, rel=1e-5), stage
    assert not list(full_run.glob("**/trainer/runs"))  # not in the Trainer's default place
