#!/usr/bin/env python
"""BiRQ vs BEST-RQ vs no pretraining on a synthesised multi-voice corpus, end to end on CPU.

    .venv/bin/python examples/demo/run_demo.py --preset quick   --out demo_runs/quick    # make demo-quick
    .venv/bin/python examples/demo/run_demo.py --preset default --out demo_runs/default  # make demo

Stages (each resumable; a rerun skips finished stages, an interrupted fairseq run resumes
from its checkpoint_last.pt):

 1. corpus       manifests/build_corpus.py (reused when data/tts_<preset>/corpus.json matches)
 2. pretrain     BiRQ, then BEST-RQ (model.enhanced_stream=false): same model, updates, batch,
                 seed; fairseq-hydra-train with examples/pretrain/tiny_birq.yaml
 3. init         the "no pretraining" starting point: the same BiRQ architecture and seed,
                 weights at their initialisation (one update at learning rate 0, so the
                 checkpoint is in fairseq's own pretraining format)
 4. finetune     stock wav2vec_ctc + ctc criterion (examples/finetune/tiny_ctc.yaml) on the
                 labelled subset `finetune`, identical settings for the three starting points
 5. decode       fairseq-generate --task birq_finetuning --scoring wer on test_seen/test_unseen
 6. frozen       the frozen evaluation of each starting point (`birq-fairseq superb`: PER and
                 CER of linear heads over all layers; phoneme labels made once with espeak-ng)
 7. report       WER / CER / frozen tables, OUT/results.json, OUT/pretraining_curves.png, OUT/wer.png

Results are from checkpoint_last.pt of each finetuning run (no model selection on valid).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as P  # noqa: E402
import report as R  # noqa: E402
import stages as S  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(P.PRESETS), default="default")
    p.add_argument("--out", default=None, help="run directory (default demo_runs/<preset>)")
    p.add_argument("--corpus-dir", default=None, help="corpus directory (default data/tts_<corpus preset>)")
    p.add_argument("--corpus-preset", default=None, help="override the preset's corpus size (tiny/quick/default/large)")
    p.add_argument("--seed", type=int, default=1, help="training seed (pretraining and finetuning)")
    p.add_argument("--pretrain-updates", type=int, default=None)
    p.add_argument("--finetune-updates", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="audio samples per batch (16 kHz)")
    p.add_argument("--threads", type=int, default=None, help="torch/OMP threads (default: min(cores, 2))")
    p.add_argument("--birq-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra fairseq override for the BiRQ pretraining only (ablations)")
    return p


def relation_to_results_md(results: dict) -> str:
    """One line: this run's CER ratio next to RESULTS.md's multi-seed comparison (the
    committed summaries of the ``regime`` preset), so a reader knows how the two relate."""
    def mean_cer(res, system):  # over both test sets (and seeds, when given lists)
        values = [r["cer"] for t in P.TEST_SETS for r in R.as_list(res[system][t])]
        return sum(values) / len(values)

    def cer_ratio(res, num, den):
        try:
            return mean_cer(res, num) / mean_cer(res, den)
        except (KeyError, ZeroDivisionError):
            return None

    here = cer_ratio(results, "bestrq", "none")
    seeds, _ = R.load_summaries("regime")
    merged = {}
    for run in seeds.values():
        for system, per_test in run["results"].items():
            for test, r in per_test.items():
                merged.setdefault(system, {}).setdefault(test, []).append(r)
    there = cer_ratio(merged, "bestrq", "none")
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    return (f"Relation to RESULTS.md: this demo is one seed at demo scale (CER BEST-RQ / no pretraining = "
            f"{fmt(here)}, both test sets); RESULTS.md is the 3-seed comparison in the `regime` preset "
            f"(6 h unlabelled, 100 labelled utterances, topline, probe; `make results`) where that ratio is "
            f"{fmt(there)} over {len(seeds)} committed seed(s).")


def report(out: Path, pipe: P.Pipeline, summary: dict, preset_name: str, preset: dict, clock: S.Clock) -> dict:
    S.banner(clock, "report")
    results = summary["results"]
    logs = pipe.pretrain_logs()
    curves_png, wer_png = out / "pretraining_curves.png", out / "wer.png"
    if logs:
        R.plot_pretraining(logs, curves_png, title=f"pretraining ({preset_name} preset, seed {pipe.seed}): "
                                                   "lines = train, dots = valid")
    R.plot_wer_bars(results, wer_png, title=f"WER after CTC finetuning ({preset_name} preset)")
    final = {}
    for name, parsed in logs.items():
        last = parsed["train"][-1] if parsed["train"] else {}
        final[name] = {k: last.get(k) for k in ("num_updates", "anchor_acc", "anchor_code_ppl", "enhanced_acc",
                                                 "enhanced_code_ppl", "gumbel_temp", "penalty_gap")
                       if k in last}
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "preset": preset_name,
        "settings": preset,
        "seed": pipe.seed,
        "corpus_dir": str(pipe.corpus_dir),
        "corpus": {k: summary["corpus"].get(k) for k in ("size", "seed", "counts", "total_hours", "seen_voices",
                                                        "unseen_voices")},
        "results": results,
        "pretraining_final": final,
        "timings": summary["timings"],
        "total_wall_seconds_this_invocation": round(clock.elapsed(), 1),
        "plots": [str(curves_png) if logs else None, str(wer_png)],
    }
    if summary.get("frozen"):
        doc["frozen"] = summary["frozen"]
    doc["relation_to_results_md"] = relation_to_results_md(results)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("\nWER (%) after CTC finetuning, greedy decoding, checkpoint_last:")
    print(R.wer_table(results, "wer"))
    print("\nCER (%) (same decodes):")
    print(R.wer_table(results, "cer"))
    if doc.get("frozen"):
        print("\nFrozen evaluation (birq-fairseq superb: linear CTC heads over a learned weighted sum of all "
              "layers of the frozen encoder, trained on the labelled split; PER of phonemes, CER of characters, %):")
        print(R.frozen_table(summary["frozen"]))
    print(doc["relation_to_results_md"])
    for name, f in final.items():
        print(f"{name} at update {f.get('num_updates')}: " + " ".join(
            f"{k}={v}" for k, v in f.items() if k != "num_updates"))
    print("\nstage timings (wall s / CPU s):")
    for name, t in summary["timings"].items():
        print(f"  {name:28s} {t['wall_seconds'] or 0:8.0f} {t['cpu_seconds'] or 0:8.0f}")
    print(f"\nwrote {out / 'results.json'}, {curves_png}, {wer_png}")
    return doc


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    preset = P.resolve_preset(args)
    out = Path(args.out or f"demo_runs/{args.preset}").resolve()
    corpus_dir = Path(args.corpus_dir or S.REPO / "data" / f"tts_{preset['corpus']}")
    out.mkdir(parents=True, exist_ok=True)
    clock = S.Clock()
    S.banner(clock, f"BiRQ demo: preset {args.preset} -> {out}")
    print(f"   settings: {json.dumps(preset)}\n   corpus: {corpus_dir} (preset {preset['corpus']})", flush=True)
    pipe = P.Pipeline(out, preset, corpus_dir, preset["corpus"], seed=args.seed, clock=clock,
                      threads=args.threads, overrides={"birq": args.birq_override})
    try:
        summary = pipe.run()
    except S.StageFailed as e:
        print(f"\nrun_demo: {e}\nrun_demo: rerun the same command to resume.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun_demo: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    report(out, pipe, summary, args.preset, preset, clock)
    S.banner(clock, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
