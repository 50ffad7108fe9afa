# The README's commands. Every target first runs the idempotent set-up.
PY := .venv/bin/python
OUT ?= demo_runs

.PHONY: setup test test-fast demo demo-quick results results-report bench corpus clean

setup:
	bash scripts/setup.sh

## The test suite (CI runs exactly this).
test: setup
	$(PY) -m pytest -q tests

## Unit tests only (skips the end-to-end console-script runs).
test-fast: setup
	$(PY) -m pytest -q tests -m "not e2e"

## The main job: TTS corpus -> BiRQ and BEST-RQ pretraining -> CTC finetuning -> WER table + plots (<= 30 min).
demo: setup
	$(PY) examples/demo/run_demo.py --preset default --out $(OUT)/default

## A first look in <= 8 minutes.
demo-quick: setup
	$(PY) examples/demo/run_demo.py --preset quick --out $(OUT)/quick

## The multi-seed comparison of RESULTS.md (regime preset; ~30-80 min per seed on 2 cores; resumable):
## each finished seed leaves examples/demo/results/runs/regime/seed<N>.json (commit it), and RESULTS.md
## is rewritten from every committed seed.  make results SEEDS=2   runs one seed.
SEEDS ?= 1 2 3
ABLATIONS ?=
results: setup
	$(PY) examples/demo/run_results.py --preset regime --seeds $(SEEDS) --out $(OUT)/results \
	  $(if $(ABLATIONS),--ablations $(ABLATIONS),)

## RESULTS.md from the committed seed summaries only (runs nothing).
results-report: setup
	$(PY) examples/demo/run_results.py --preset regime --report-only --out $(OUT)/results

## Cost of BiRQ's labels against BEST-RQ and HuBERT, measured side by side (< 20 min).
bench: setup
	$(PY) examples/benchmarks/run.py

clean:
	rm -rf $(OUT) outputs multirun
