# The README's commands. Every target first runs the idempotent set-up.
PY := .venv/bin/python
OUT ?= demo_runs

.PHONY: setup test test-fast demo demo-quick results bench corpus clean

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

## The longer multi-seed comparison that writes RESULTS.md (hours; resumable).
results: setup
	$(PY) examples/demo/run_results.py --out $(OUT)/results

## Cost of BiRQ's labels against BEST-RQ and HuBERT, measured side by side (< 20 min).
bench: setup
	$(PY) examples/benchmarks/run.py

clean:
	rm -rf $(OUT) outputs multirun
