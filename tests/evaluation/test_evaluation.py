"""`ila eval`: response loss, greedy generation, exact match, multiple choice, adapters."""

import json
import logging
import math

import pytest
import torch

from ila.cli import main
from ila.config import EvalSettings
from ila.data.formats import Example
from ila.data.tokenization import PaddingCollator, prompt_token_ids, tokenize_examples
from ila.errors import IlaError
from ila.evaluation import (
    evaluate_model,
    exact_match_score,
    greedy_generate,
    merged_for_inference,
    normalize_answer,
    response_loss,
    response_token_losses,
    stop_token_ids,
)
from ila.evaluation.multiple_choice import load_mc_questions, mc_accuracy, mc_prompt


def conversation(question: str, answer: str) -> Example:
    return Example(
        messages=(
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"Working.\nAnswer: {answer}"},
        ),
        answer=answer,
    )


EXAMPLES = [conversation(f"What is {i} + {i}?", str(2 * i)) for i in range(1, 8)]
# Prompts of six lengths whose answers the tiny model learns apart (_memorise).
SAY = [
    conversation("please " * k + f"say {w}.", w)
    for k, w in enumerate(["seven", "nine", "two", "four", "six", "three"])
]


def test_normalize_and_exact_match():
    assert normalize_answer("  1,200. ") == normalize_answer("1200")
    assert normalize_answer("Tunnel  Lemon") == "tunnel lemon"
    assert normalize_answer("12") != normalize_answer("12.5")
    assert exact_match_score(["4", None, " 6 ", "x"], ["4", "5", "6", "7"]) == 0.5
    with pytest.raises(ValueError):
        exact_match_score([], [])


def test_response_loss_is_the_token_mean_and_does_not_depend_on_batching(
    tiny_llama, tiny_tokenizer
):
    features = tokenize_examples(EXAMPLES, tiny_tokenizer, max_length=64).features
    pad = tiny_tokenizer.pad_token_id
    loss1, n1 = response_loss(tiny_llama, features, pad_token_id=pad, batch_size=1)
    loss3, n3 = response_loss(tiny_llama, features, pad_token_id=pad, batch_size=3)
    assert n1 == n3 == sum(sum(lab >= 0 for lab in f["labels"]) for f in features)
    assert loss1 == pytest.approx(loss3, rel=1e-5)
    # One example: the library's own causal-LM loss (mean over its labelled tokens).
    batch = PaddingCollator(pad)([features[0]])
    with torch.no_grad():
        expected = float(tiny_llama(**batch).loss)
    single, _ = response_loss(tiny_llama, features[:1], pad_token_id=pad, batch_size=1)
    assert single == pytest.approx(expected, rel=1e-5)


def test_batched_greedy_generation_equals_one_at_a_time_and_a_plain_argmax_loop(
    tiny_llama, tiny_tokenizer
):
    prompts = [prompt_token_ids(e.messages, tiny_tokenizer) for e in EXAMPLES[:4]]
    prompts[1] = prompts[1] + prompts[1][-3:]  # different lengths: left padding matters
    stops = stop_token_ids(tiny_tokenizer, "auto")
    batched = greedy_generate(
        tiny_llama, tiny_tokenizer, prompts, max_new_tokens=8, batch_size=4, stop_ids=stops
    )
    alone = [
        greedy_generate(
            tiny_llama, tiny_tokenizer, [p], max_new_tokens=8, batch_size=1, stop_ids=stops
        )[0]
        for p in prompts
    ]
    assert batched == alone
    ids = torch.tensor([prompts[0]])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(tiny_llama(input_ids=ids).logits[0, -1].argmax())
            if nxt in stops:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert batched[0] == tiny_tokenizer.decode(out, skip_special_tokens=True)


def test_batches_of_similar_lengths_keep_every_result_in_input_order(tiny_llama, tiny_tokenizer):
    """Losses and answers are computed in batches sorted by length and returned in the
    order given: equal to one example at a time, whatever the batch size."""
    examples = [SAY[i] for i in (3, 0, 5, 2, 4, 1)]  # lengths out of order
    _memorise(tiny_llama, tiny_tokenizer, examples)
    pad = tiny_tokenizer.pad_token_id
    features = tokenize_examples(examples, tiny_tokenizer, max_length=96).features
    alone = [
        response_token_losses(tiny_llama, [f], pad_token_id=pad, batch_size=1)[0] for f in features
    ]
    batched = response_token_losses(tiny_llama, features, pad_token_id=pad, batch_size=3)
    assert [n for _, n in batched] == [n for _, n in alone]
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in alone], rel=1e-5)
    prompts = [prompt_token_ids(e.messages, tiny_tokenizer) for e in examples]
    stops = stop_token_ids(tiny_tokenizer, "auto")
    one_by_one = [
        greedy_generate(
            tiny_llama, tiny_tokenizer, [p], max_new_tokens=16, batch_size=1, stop_ids=stops
        )[0]
        for p in prompts
    ]
    assert len(set(one_by_one)) > 1  # the answers differ, so a reordering would show
    assert (
        greedy_generate(
            tiny_llama, tiny_tokenizer, prompts, max_new_tokens=16, batch_size=3, stop_ids=stops
        )
        == one_by_one
    )


def _memorise(model, tokenizer, examples, steps=100):
    """Train the tiny model on ``examples`` so that its greedy answers differ by prompt
    (at its random init it answers every prompt alike)."""
    batch = PaddingCollator(tokenizer.pad_token_id)(
        tokenize_examples(examples, tokenizer, max_length=96).features
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()


def _random_lora(model, dtype=torch.float32):
    from ila.config import LoraSettings
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora

    model = add_lora(model.to(dtype), find_layers(model).units, LoraSettings(), seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the update a size
                param.copy_(0.05 * torch.randn(param.shape, generator=generator).to(dtype))
    return model


def test_a_float32_lora_is_merged_for_evaluation_with_the_same_losses_and_answers(
    tiny_llama, tiny_tokenizer
):
    pad = tiny_tokenizer.pad_token_id
    features = tokenize_examples(SAY, tiny_tokenizer, max_length=64).features
    prompts = [prompt_token_ids(e.messages, tiny_tokenizer) for e in SAY]
    stops = stop_token_ids(tiny_tokenizer, "auto")

    def measure(model):
        losses = response_token_losses(model, features, pad_token_id=pad, batch_size=4)
        answers = greedy_generate(
            model, tiny_tokenizer, prompts, max_new_tokens=16, batch_size=4, stop_ids=stops
        )
        return [s for s, _ in losses], answers

    _memorise(tiny_llama, tiny_tokenizer, SAY)
    base_losses, _ = measure(tiny_llama)
    lora = _random_lora(tiny_llama)
    losses, answers = measure(lora)
    assert losses != pytest.approx(base_losses, rel=1e-3)  # the update changes the model
    merged = merged_for_inference(lora)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    merged_losses, merged_answers = measure(merged)
    assert merged_losses == pytest.approx(losses, rel=1e-5)
    assert len(set(answers)) > 1 and merged_answers == answers


def test_a_16_bit_lora_is_not_merged(tiny_llama):
    lora = _random_lora(tiny_llama, torch.bfloat16)
    assert merged_for_inference(lora) is lora  # bf16 weights would round the update away


def test_stop_tokens_include_the_turn_end_of_the_template(tiny_tokenizer):
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tiny_tokenizer, "chat")
    assert tiny_tokenizer.eos_token_id in stop_token_ids(tiny_tokenizer, "plain")


def test_exact_match_reflects_what_the_model_answers(tiny_llama, tiny_tokenizer):
    """Train the tiny model to memorise two answers: exact match goes from 0 to 1."""
    data = [conversation("Say seven.", "7"), conversation("Say nine.", "9")]
    settings = EvalSettings(generate_examples=2, max_new_tokens=24, batch_size=2)
    before = evaluate_model(tiny_llama, tiny_tokenizer, data, settings, max_length=64)
    assert before.metrics["exact_match"] == 0.0
    features = tokenize_examples(data, tiny_tokenizer, max_length=64).features
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)(features)
    optimizer = torch.optim.Adam(tiny_llama.parameters(), lr=3e-3)
    for _ in range(100):
        optimizer.zero_grad()
        tiny_llama(**batch).loss.backward()
        optimizer.step()
    after = evaluate_model(tiny_llama, tiny_tokenizer, data, settings, max_length=64)
    assert after.metrics["exact_match"] == 1.0
    assert after.metrics["loss"] < before.metrics["loss"]
    assert [g["predicted_answer"] for g in after.generations] == ["7", "9"]
    assert all(g["correct"] for g in after.generations)


def test_data_without_checkable_answers_has_no_exact_match(tiny_llama, tiny_tokenizer):
    chat = [
        Example(
            messages=(
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Hi, nice to meet you"},
            )
        )
    ]
    settings = EvalSettings(generate_examples=1, max_new_tokens=4)
    result = evaluate_model(tiny_llama, tiny_tokenizer, chat, settings, max_length=64)
    assert result.metrics["exact_match"] is None
    assert result.metrics["exact_match_examples"] == 0
    assert len(result.generations) == 1 and "correct" not in result.generations[0]
    assert math.isfinite(result.metrics["perplexity"])


def write_mc(path, rows):
    path.write_text("".join(",".join(row) + "\n" for row in rows))


def test_mc_accuracy_scores_the_models_own_choice(tiny_llama, tiny_tokenizer, tmp_path):
    rows = [[f"Question {i}?", "red", "blue", "green", "black", "A"] for i in range(6)]
    write_mc(tmp_path / "colors_test.csv", rows)
    questions = load_mc_questions(tmp_path)
    assert len(questions) == 6 and questions[0].subject == "colors"
    assert mc_prompt(questions[0]).endswith("D. black\nAnswer:")
    letters = [tiny_tokenizer(" " + x, add_special_tokens=False)["input_ids"] for x in "ABCD"]
    picks = []
    with torch.no_grad():
        for q in questions:  # each choice scored alone, unpadded, one sequence at a time
            bos = [tiny_tokenizer.bos_token_id] if tiny_tokenizer.bos_token_id is not None else []
            prompt = bos + tiny_tokenizer(mc_prompt(q), add_special_tokens=False)["input_ids"]
            totals = []
            for cont in letters:
                ids = torch.tensor([prompt + cont])
                logp = tiny_llama(input_ids=ids).logits[0].log_softmax(-1)
                totals.append(sum(float(logp[len(prompt) + k - 1, t]) for k, t in enumerate(cont)))
            picks.append(totals.index(max(totals)))
    right = [[*r[:5], "ABCD"[p]] for r, p in zip(rows, picks, strict=True)]
    wrong = [[*r[:5], "ABCD"[(p + 1) % 4]] for r, p in zip(rows, picks, strict=True)]
    write_mc(tmp_path / "colors_test.csv", right)
    result = mc_accuracy(tiny_llama, tiny_tokenizer, load_mc_questions(tmp_path), batch_size=4)
    assert result["accuracy"] == 1.0 and result["by_subject"] == {"colors": 1.0}
    write_mc(tmp_path / "colors_test.csv", wrong)
    assert mc_accuracy(tiny_llama, tiny_tokenizer, load_mc_questions(tmp_path))["accuracy"] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("q,a,b,c,d\n", "expected 6 columns"),
        ("q,a,b,c,d,E\n", "answer must be one of A, B, C, D"),
        ("", "holds no question"),
    ],
)
def test_bad_mc_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "x_test.csv").write_text(content)
    with pytest.raises(IlaError, match=message):
        load_mc_questions(tmp_path / "x_test.csv")


def test_mc_missing_path_is_an_error(tmp_path):
    with pytest.raises(IlaError, match="does not exist"):
        load_mc_questions(tmp_path / "nope")


def eval_args(model_dir, out, *extra):
    return [
        "eval",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--max-length",
        "96",
        "--limit",
        "60",
        "--eval-generate-examples",
        "3",
        "--eval-max-new-tokens",
        "6",
        *extra,
    ]


def test_cli_eval_writes_results_and_generations(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(eval_args(tiny_model_dir, out)) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["schema_version"] == 1 and results["split"] == "eval"
    m = results["metrics"]
    assert m["num_examples"] == 6  # 10% of 60 held out, as training splits them
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["exact_match_examples"] == 3
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "generation" in json.loads(lines[0])
    assert json.loads((out / "run_state.json").read_text())["completed_stages"] == ["eval"]
    assert "exact match" in capsys.readouterr().out


def test_cli_eval_with_adapters_from_finetune_runs(tiny_model_dir, tmp_path):
    common = ["--device", "cpu", "--max-length", "96", "--limit", "60", "--batch-size", "4"]
    for method in ("lora", "full"):
        args = ["finetune", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / method)]
        args += ["--all-units", "--method", method, "--max-steps", "4", "--learning-rate", "1e-2"]
        assert main(args + common) == 0
    losses = {}
    for name, adapter in (("base", None), ("lora", "lora"), ("full", "full")):
        extra = ["--adapter", str(tmp_path / adapter)] if adapter else []
        out = tmp_path / f"ev-{name}"
        assert main(eval_args(tiny_model_dir, out, "--eval-generate-examples", "0", *extra)) == 0
        losses[name] = json.loads((out / "eval_results.json").read_text())["metrics"]["loss"]
    assert losses["lora"] < losses["base"] and losses["full"] < losses["base"]
    assert losses["lora"] != losses["full"]


def test_cli_eval_bad_inputs_leave_nothing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    cases = [
        (["--adapter", str(tmp_path / "missing")], "does not exist"),
        (["--adapter", str(tmp_path)], "holds no adapter_config.json"),
        (["--eval-lm-eval-tasks", "hellaswag"], "pip install lm-eval"),
        (["--eval-mc-data", str(tmp_path / "none.csv")], "does not exist"),
        (["--eval-fraction", "0"], "--eval-split all"),
        (["--eval-batch-size", "0"], "--eval-batch-size"),
    ]
    for extra, message in cases:
        assert main(eval_args(tiny_model_dir, out, *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_multiple_choice_alone_runs_only_multiple_choice(tiny_model_dir, tmp_path, capsys, caplog):
    """docs/evaluation.md, "What runs": asked only for multiple choice, `ila eval` measures
    nothing on --data; --eval-on-data adds the loss and greedy answers back."""
    caplog.set_level(logging.INFO, logger="ila")
    write_mc(tmp_path / "colors_test.csv", [[f"Q{i}?", "a", "b", "c", "d", "B"] for i in range(5)])
    out = tmp_path / "mc-only"
    argv = ["--eval-mc-data", str(tmp_path / "colors_test.csv"), "--eval-split", "all"]
    assert main(eval_args(tiny_model_dir, out, *argv)) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["data"] is None and results["split"] is None
    assert set(results["metrics"]) == {"mc_accuracy", "mc_questions", "mc_by_subject"}
    assert results["metrics"]["mc_questions"] == 5
    assert (out / "generations.jsonl").read_text() == ""
    printed = capsys.readouterr().out
    assert (
        "multiple choice" in printed
        and "loss" not in printed
        and " on " not in printed.split("\n")[0]
    )
    phases = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "ila.progress"]
    assert phases == ["multiple choice"]
    caplog.clear()
    both = tmp_path / "both"
    assert main(eval_args(tiny_model_dir, both, *argv, "--eval-on-data")) == 0
    metrics = json.loads((both / "eval_results.json").read_text())["metrics"]
    assert {"loss", "exact_match", "mc_accuracy"} <= set(metrics)
    assert metrics["mc_accuracy"] == results["metrics"]["mc_accuracy"]
    phases = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "ila.progress"]
    assert phases == ["held-out loss", "greedy answers", "multiple choice"]


def test_what_runs_by_default_and_nothing_to_run_is_an_error(tiny_model_dir, tmp_path, capsys):
    assert EvalSettings().measures_data("eval") and EvalSettings().measures_data("run")
    for asked in ({"mc_data": "mc.csv"}, {"lm_eval_tasks": ["arc_easy"]}):
        assert not EvalSettings(**asked).measures_data("eval")
        assert EvalSettings(**asked).measures_data("run")  # ila run compares the variants' loss
        assert EvalSettings(**asked, on_data=True).measures_data("eval")
        assert not EvalSettings(**asked, on_data=False).measures_data("run")
    out = tmp_path / "ev"
    assert main(eval_args(tiny_model_dir, out, "--no-eval-on-data")) == 2
    err = capsys.readouterr().err
    assert "--eval-on-data: off leaves nothing to evaluate" in err and err.count("\n") == 1
    assert not out.exists()


def test_eval_offers_no_resume_it_would_ignore(capsys):
    from ila.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--output-dir", "out", "--resume"])
    assert "unrecognized arguments: --resume" in capsys.readouterr().err
