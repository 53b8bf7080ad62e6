"""`ila score` / `ila run` end to end on a tiny model, through the real CLI entry point."""

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from ila.cli import main
from ila.core.scores import LayerScores

FAST = [
    "--max-length", "96",
    "--limit", "120",
    "--batch-size", "4",
    "--stage1-max-steps", "30",
    "--stage1-min-steps", "5",
    "--stage2-steps", "40",
]  # fmt: skip


@pytest.fixture(scope="module")
def score_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "run"
    code = main(["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *FAST])
    assert code == 0
    return out


def test_score_writes_the_run_directory_contract(score_run):
    files = {p.relative_to(score_run).as_posix() for p in score_run.rglob("*") if p.is_file()}
    expected = {
        "run_state.json",
        "config.yaml",
        "environment.json",
        "ila.log",
        "data.json",
        "metrics.jsonl",
        "layer_scores.json",
        "stage1/summary.json",
        "stage2/summary.json",
        "stage2/gate_trajectory.json",
        "report/ranking.md",
        "report/heatmap.png",
        "report/blocks.png",
    }
    assert expected <= files
    assert any(f.startswith("stage1/adapter/") and f.endswith(".safetensors") for f in files)
    assert not [f for f in files if f.endswith(".tmp")]
    state = json.loads((score_run / "run_state.json").read_text())
    assert state["command"] == "score"
    assert state["completed_stages"] == ["stage1", "stage2", "score"]


def test_scores_file_content(score_run, tiny_model_dir):
    scores = LayerScores.load(score_run)
    assert scores.method == "ila" and scores.unit_kind == "module"
    assert len(scores.units) == 4 * 7
    assert scores.names[0] == "layers.0.self_attn.q_proj"
    assert scores.layout["num_blocks"] == 4
    meta = scores.meta
    assert 1 <= meta["T"] <= 30 and meta["stage2_steps"] == 40
    assert meta["seed"] == 0 and len(meta["data_fingerprint"]) == 16
    raw = json.loads((score_run / "layer_scores.json").read_text())
    assert sorted(u["rank"] for u in raw["units"]) == list(range(1, 29))
    summary1 = json.loads((score_run / "stage1" / "summary.json").read_text())
    assert len(summary1["loss_curve"]) == summary1["steps"] == meta["stage1_steps"]


def test_resolved_config_and_metrics(score_run, tiny_model_dir):
    config = yaml.safe_load((score_run / "config.yaml").read_text())
    assert config["model"]["model"] == str(tiny_model_dir)
    assert config["stage1"]["max_steps"] == 30 and config["stage2"]["steps"] == 40
    assert config["lora"]["rank"] == 8 and config["method"] == "ila"
    rows = [json.loads(line) for line in (score_run / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in rows]
    assert stages.count("stage2") == 40 and stages.count("stage1") >= 1
    assert all(r["loss"] > 0 for r in rows)
    trajectory = json.loads((score_run / "stage2" / "gate_trajectory.json").read_text())
    assert len(trajectory["values"]) == 41 and len(trajectory["values"][0]) == 28


def test_same_seed_same_ranking_and_scores_separate(score_run, tiny_model_dir, tmp_path):
    again = tmp_path / "again"
    assert main(["score", "--model", str(tiny_model_dir), "--output-dir", str(again), *FAST]) == 0
    first, second = LayerScores.load(score_run), LayerScores.load(again)
    assert first.ranking() == second.ranking()
    assert [u.raw for u in first.units] == pytest.approx([u.raw for u in second.units], abs=1e-5)
    gates = [u.importance for u in first.units]
    assert max(gates) - min(gates) > 0.05  # neither all ~1 nor all ~0


def test_block_unit_and_yaml_config(tiny_model_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"stage2": {"unit": "block", "steps": 5}, "lora": {"rank": 4}})
    )
    out = tmp_path / "blocks"
    code = main(
        [
            "score",
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(out),
            "--config",
            str(config),
            *FAST[:-2],
        ]
    )
    assert code == 0
    scores = LayerScores.load(out)
    assert scores.unit_kind == "block" and scores.names == [
        "layers.0",
        "layers.1",
        "layers.2",
        "layers.3",
    ]
    assert scores.meta["stage2_steps"] == 5 and scores.meta["lora"]["rank"] == 4


def test_output_dir_with_another_run_is_refused(score_run, tiny_model_dir, capsys):
    before = sorted(p.name for p in score_run.iterdir())
    code = main(["score", "--model", str(tiny_model_dir), "--output-dir", str(score_run), *FAST])
    assert code == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in score_run.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage1-epsilon", "2"], "--stage1-epsilon: must be in (0, 1)"),
        (["--eval-fraction", "1.0"], "--eval-fraction: must be in [0, 1)"),
        (["--scorer", "illa"], "unknown scorer 'illa'; did you mean ila?"),
        (["--model", "./no/such/model"], "does not exist"),
        (["--data", "no-such-preset-or-file"], "not a preset"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(
    args, message, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "bad"
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *FAST, *args]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("ila: error:") and message in errors[0]
    assert not out.exists()  # nothing half-written


def test_yaml_errors(tmp_path, tiny_model_dir, capsys):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("stage1:\n  max_step: 3\n")
    assert main(["score", "--output-dir", str(tmp_path / "o"), "--config", str(bad_key)]) == 2
    assert "unknown key 'stage1.max_step'; did you mean max_steps" in capsys.readouterr().err


def test_help_is_fast_and_imports_no_torch():
    start = time.perf_counter()
    code = (
        "import sys, ila.cli; ila.cli.build_parser().format_help(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert time.perf_counter() - start < 5  # generous: shared CI machines; typically ~0.1 s
    result = subprocess.run([sys.executable, "-m", "ila", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "score" in result.stdout


def test_stage1_ending_one_step_before_a_check_ends_cleanly(tiny_model_dir, tmp_path):
    """The Trainer's closing log after the last step is not a step: the stopping rule sees
    exactly the steps trained (it once took it for step 6, a check, and failed)."""
    out = tmp_path / "run"
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *FAST]
    argv += ["--stage1-max-steps", "5", "--stage1-min-steps", "2", "--stage1-window", "2"]
    # An epsilon no loss meets: stage 1 runs to its cap of 5, one step before the check at 6.
    assert main([*argv, "--stage1-epsilon", "1e-9", "--stage2-steps", "2"]) == 0
    summary = json.loads((out / "stage1" / "summary.json").read_text())
    assert summary["steps"] == len(summary["loss_curve"]) == 5
    # Checks at steps 2 and 4 only: one comparison of consecutive top sets, at step 4.
    assert [c["step"] for c in summary["ranking_checks"]] == [4]


def test_ls_scorers(capsys):
    assert main(["ls", "scorers"]) == 0
    assert capsys.readouterr().out.startswith("ila ")


def test_run_chains_score_select_finetune(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--model", str(tiny_model_dir), "--output-dir", str(out), *FAST]
    evals = ["--eval-generate-examples", "2", "--eval-max-new-tokens", "4"]
    assert main([*argv, "--tune-top-fraction", "0.25", "--max-steps", "3", *evals]) == 0
    printed = capsys.readouterr().out
    assert "selection: 7 of 28 units" in printed and "fine-tune: lora on 7 of 28 units" in printed
    assert "all-units" in printed and "selected" in printed
    state = json.loads((out / "run_state.json").read_text())
    assert state["command"] == "run"
    stages = ["score", "select", "finetune", "finetune-all-units", "eval"]
    assert [s for s in state["completed_stages"] if s in stages] == stages
    compared = json.loads((out / "eval" / "variants.json").read_text())["variants"]
    assert list(compared) == ["base", "all-units", "selected"]
    assert len({round(v["loss"], 6) for v in compared.values()}) == 3  # three different models
    assert all(v["exact_match_examples"] == 2 for v in compared.values())
    baseline = json.loads((out / "finetune-all-units" / "finetune_summary.json").read_text())
    assert baseline["num_selected"] == 28 and baseline["steps"] == 3
    for variant in compared:
        assert (out / "eval" / variant / "generations.jsonl").is_file()
    # A crash during the evaluation: --resume reuses both fine-tunes and evaluates again.
    state["completed_stages"].remove("eval")
    (out / "run_state.json").write_text(json.dumps(state))
    shutil.rmtree(out / "eval")
    baseline_file = out / "finetune-all-units" / "finetune_summary.json"
    written = baseline_file.stat().st_mtime_ns
    resume = [*argv, "--tune-top-fraction", "0.25", "--max-steps", "3", *evals, "--resume"]
    assert main(resume) == 0
    assert baseline_file.stat().st_mtime_ns == written
    again = json.loads((out / "eval" / "variants.json").read_text())["variants"]
    assert again == compared
    selection = json.loads((out / "selection.json").read_text())
    assert selection["selected"] == sorted(
        LayerScores.load(out).top(0.25), key=LayerScores.load(out).names.index
    )
    summary = json.loads((out / "finetune" / "finetune_summary.json").read_text())
    assert summary["steps"] == 3 and summary["num_selected"] == 7
    assert (out / "finetune" / "adapter" / "adapter_config.json").is_file()


def test_method_is_the_older_spelling_of_scorer(tiny_model_dir, tmp_path, capsys, caplog):
    argv = ["score", "--model", str(tiny_model_dir), "--limit", "24", "--max-length", "64"]
    argv += ["--device", "cpu", "--output-dir", str(tmp_path / "run")]
    assert main([*argv, "--method", "random"]) == 0
    assert LayerScores.load(tmp_path / "run").method == "random"
    assert "'ila score --method' is deprecated, use --scorer" in caplog.text
    assert main([*argv, "--method", "random", "--scorer", "snr", "--overwrite"]) == 2
    assert "--scorer snr and --method random disagree" in capsys.readouterr().err


def test_ls_presets_lists_every_preset_with_its_objective(capsys):
    from ila.cli import main

    assert main(["ls", "presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split()[1] for line in lines}
    assert listed["ila-instruct"] == "[sft]" and listed["chitchat"] == "[sft]"
    assert listed["ila-preference"] == "[dpo]"
