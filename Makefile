# The README's commands. Every target first runs the idempotent set-up.
PY := .venv/bin/python
OUT ?= demo_runs

.PHONY: setup test test-fast demo demo-quick results results-report label-health label-health-report ladder ladder-report bench corpus clean

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

## BiRQ's label generator over long pretraining (RESULTS.md "label health"; 30 k updates, ~30-50 min per
## run on one core; resumable): each finished run leaves examples/demo/label_health/<variant>_seed<N>.json
## (commit it).  make label-health RUNS="argmax_sinkhorn:1 stopgrad:1"   (label_health.py --list names them)
RUNS ?= argmax_sinkhorn:1
label-health: setup
	$(PY) examples/demo/label_health.py --runs $(RUNS)

## The label-health table and plot (examples/demo/label_health/health.md, health.png) from the committed runs.
label-health-report: setup
	$(PY) examples/demo/label_health.py --report

## The pretraining ladder (issue 15): rungs SIZE:SYSTEM:UPDATES:SEED pretrained on the default corpus
## (one thread; resumable), each scored by the frozen evaluation and CTC finetuning on 100 / 300
## labelled utterances; each finished rung leaves examples/demo/ladder/<rung>.json (commit it).
##   make ladder RUNS="medium:bestrq:10000:1 medium:birq:10000:1 medium:none:0:1 fbank"
ladder: setup
	OMP_NUM_THREADS=1 $(PY) examples/demo/ladder.py --runs $(RUNS)

## The ladder's table and plot (examples/demo/ladder/ladder.md, ladder.png) from the committed rungs.
ladder-report: setup
	$(PY) examples/demo/ladder.py --report

## Cost of BiRQ's labels against BEST-RQ and HuBERT, measured side by side (< 20 min).
bench: setup
	$(PY) examples/benchmarks/run.py

clean:
	rm -rf $(OUT) outputs multirun
