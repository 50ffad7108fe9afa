#!/usr/bin/env python
"""Multi-seed comparison BiRQ / BEST-RQ / no pretraining, plus BiRQ ablations -> RESULTS.md.

    .venv/bin/python examples/demo/run_results.py                       # make results
    .venv/bin/python examples/demo/run_results.py --preset large --seeds 1 2 3
    .venv/bin/python examples/demo/run_results.py --preset quick --seeds 1 2 --ablations k1 stopgrad

Each seed is one full demo pipeline (examples/demo/pipeline.py: corpus, pretraining of
BiRQ and BEST-RQ with the same budget, the untrained init, CTC finetuning of all three,
fairseq-generate WER on seen and unseen voices) in OUT/seed<N>; ablations are BiRQ-only
pretraining runs (seed of the first seed, same budget) in OUT/ablations/<name>, with
finetuning and decoding too unless --ablation-pretrain-only. Everything is resumable:
rerunning skips finished stages.

Each finished seed (and ablation) also leaves a small summary in
examples/demo/results/runs/<preset>/ (results, diagnostics, training curves, timings,
commands; no checkpoints), which is committed. RESULTS.md is written from every committed
summary of the preset, so seeds can run in separate sessions or machines and the report
aggregates them (`--report-only` runs nothing): the prose is the template
examples/demo/templates/RESULTS.md, the tables come from report.py, the hand-written
analysis is kept in examples/demo/results_analysis.md and included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_health  # noqa: E402
import ladder  # noqa: E402
import pipeline as P  # noqa: E402
import report as R  # noqa: E402
import stages as S  # noqa: E402

# name -> (description, extra BiRQ overrides). Placeholders: {U} pretraining updates,
# {K50}/{K90} the label-generator depth at 50 % / 90 % of the encoder (the default is 70 %).
# Keys that examples/pretrain/tiny_birq.yaml does not set need hydra's "+" prefix.
ABLATIONS = OrderedDict([
    ("k50", ("label generator at 50 % of the depth (default 70 %)", ["model.enhanced_layer={K50}"])),
    ("k90", ("label generator at 90 % of the depth (default 70 %)", ["model.enhanced_layer={K90}"])),
    ("penalty4", ("penalty w2/w1 = 4 (default 24)", ["criterion.gamma=4.0"])),
    ("penalty100", ("penalty w2/w1 = 100 (default 24)", ["criterion.gamma=100.0"])),
    ("soft", ("soft Gumbel-softmax targets instead of straight-through one-hots",
              ["+model.enhanced_hard_targets=false"])),
    ("stopgrad", ("no gradient through the enhanced labels (HuBERT-like online self-labelling)",
                  ["+model.enhanced_label_grad=false"])),
    ("centering", ("not in the paper: running-mean centering of the code logits (momentum 0.9), as DINO",
                   ["+model.enhanced_centering=0.9"])),
    ("sinkhorn", ("not in the paper: Sinkhorn-Knopp balanced codes per batch (3 iterations), as SwAV",
                  ["+model.enhanced_sinkhorn_iters=3"])),
    ("diversity", ("not in the paper: codebook-diversity penalty on the enhanced codes, weight 0.5",
                   ["+criterion.diversity_weight=0.5"])),
    ("old_defaults", ("the project's earlier defaults: w1 = 1, gamma 1 -> 4, tau 2 -> 0.5, k = 50 %",
                      ["criterion.upper_weight=1.0", "criterion.gamma=1.0", "+criterion.gamma_final=4.0",
                       "+criterion.gamma_ramp_updates={U}", "model.gumbel_temp=[2.0,0.5,0.995]",
                       "model.enhanced_layer={K50}"])),
])


def ablation_overrides(name: str, preset: dict):
    layers = int(preset["model"].get("model.encoder_layers", 12))
    values = {"{U}": str(preset["pretrain_updates"]), "{K50}": str(max(1, round(0.5 * layers))),
              "{K90}": str(max(1, min(layers, round(0.9 * layers))))}
    out = []
    for o in ABLATIONS[name][1]:
        for key, value in values.items():
            o = o.replace(key, value)
        out.append(o)
    return out


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(P.PRESETS), default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=None, help="default results_runs/<preset>")
    p.add_argument("--corpus-dir", default=None, help="default data/tts_<corpus preset>")
    p.add_argument("--corpus-preset", default=None)
    p.add_argument("--pretrain-updates", type=int, default=None)
    p.add_argument("--finetune-updates", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ablations", nargs="*", default=[],
                   help=f"BiRQ ablations to run ({', '.join(ABLATIONS)}); none: --ablations")
    p.add_argument("--ablation-pretrain-only", action="store_true", help="ablations: pretraining diagnostics only")
    p.add_argument("--results-md", default=str(S.REPO / "RESULTS.md"))
    p.add_argument("--plots-dir", default=str(S.REPO / "examples" / "demo" / "results"),
                   help="where RESULTS.md's plots are copied (kept in the repository)")
    p.add_argument("--report-only", action="store_true", help="only rewrite RESULTS.md from finished runs")
    p.add_argument("--ablations-only", action="store_true",
                   help="run only the ablations (e.g. in parallel with a seeds-only invocation); no report")
    return p


def results_md(preset_name: str, preset: dict, corpus_dir: Path, plots_rel: str) -> str:
    """RESULTS.md's text from the committed summaries (those of ``make results``, the
    label-health grid and the ladder) only; tests check the committed RESULTS.md against it."""
    seed_runs, ablation_runs = R.load_summaries(preset_name)
    corpus = dict(seed_runs[max(seed_runs)]["corpus"], _dir=str(corpus_dir))
    return R.render_results_md(preset_name, preset, seed_runs, ablation_runs, corpus,
                               {name: d for name, (d, _) in ABLATIONS.items()}, plots_rel,
                               label_health_table=label_health.report(write=False),
                               ladder_table=ladder.report(write=False),
                               reference_table=ladder.reference_report(),
                               targets_table=ladder.targets_report())


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    preset = P.resolve_preset(args)
    out = Path(args.out or S.REPO / "results_runs" / args.preset).resolve()
    corpus_dir = Path(args.corpus_dir or S.REPO / "data" / f"tts_{preset['corpus']}").resolve()
    plots_dir = Path(args.plots_dir).resolve()
    plots_dir.mkdir(parents=True, exist_ok=True)
    unknown = [a for a in args.ablations if a not in ABLATIONS]
    if unknown:
        print(f"run_results: unknown ablations {unknown}; choose from {list(ABLATIONS)}", file=sys.stderr)
        return 2
    clock = S.Clock()
    S.banner(clock, f"BiRQ results: preset {args.preset}, seeds {args.seeds}, ablations {args.ablations} -> {out}")

    def stage_commands(pipe):  # in the order the stages ran
        markers = [pipe.stages.load(p.stem) for p in pipe.stages.dir.glob("*.json")]
        markers = sorted((m for m in markers if m and m.get("command")), key=lambda m: m.get("finished", ""))
        return [m["command"].replace(str(S.REPO) + "/", "") for m in markers]

    def common_fields(summary):
        return {"preset": args.preset, "settings": preset, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "code_version": S.git_version(),
                "corpus": {k: summary["corpus"].get(k) for k in ("size", "seed", "counts", "total_hours", "splits",
                                                                 "seen_voices", "unseen_voices", "engine_versions")}}

    try:
        for seed in ([] if args.ablations_only or args.report_only else args.seeds):
            pipe = P.Pipeline(out / f"seed{seed}", preset, corpus_dir, preset["corpus"], seed=seed, clock=clock,
                              threads=args.threads)
            S.banner(clock, f"seed {seed}")
            summary = pipe.run()
            run = dict(common_fields(summary), seed=seed, results=summary["results"], timings=summary["timings"],
                       diagnostics={s: R.final_diagnostics(pipe.out / "pretrain" / s / "train.log")
                                    for s in ("birq", "bestrq")},
                       logs=R.compact_logs(pipe.pretrain_logs()), commands=stage_commands(pipe),
                       probe=summary.get("probe"))
            print(f"   wrote {R.save_summary(args.preset, f'seed{seed}', run)} (commit it)", flush=True)
        first = args.seeds[0]
        # ablations run on the first seed given; seeds other than 1 (to check an ablation's
        # finding) get their own run directory and summary, "<name>_seed<N>"
        for name in ([] if args.report_only else args.ablations):
            extra = ablation_overrides(name, preset)
            key = name if first == 1 else f"{name}_seed{first}"
            pipe = P.Pipeline(out / "ablations" / key, preset, corpus_dir, preset["corpus"], seed=first, clock=clock,
                              threads=args.threads, overrides={"birq": extra}, systems=["birq"],
                              aligner=out / f"seed{first}" / "finetune" / "topline" / "checkpoint_last.pt")
            S.banner(clock, f"ablation {name}: {ABLATIONS[name][0]}")
            summary = pipe.run(pretrain_only=args.ablation_pretrain_only)
            run = dict(common_fields(summary), seed=first, description=ABLATIONS[name][0], overrides=extra,
                       results=summary["results"], timings=summary["timings"],
                       diagnostics={"birq": R.final_diagnostics(pipe.out / "pretrain" / "birq" / "train.log")},
                       logs=R.compact_logs(pipe.pretrain_logs()), commands=stage_commands(pipe),
                       probe=summary.get("probe"))
            print(f"   wrote {R.save_summary(args.preset, f'ablation_{key}', run)} (commit it)", flush=True)
    except S.StageFailed as e:
        print(f"\nrun_results: {e}\nrun_results: rerun the same command to resume.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun_results: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    if args.ablations_only:
        S.banner(clock, "ablations done (no report: rerun with --report-only)")
        return 0
    seed_runs, ablation_runs = R.load_summaries(args.preset)
    if not seed_runs:
        print(f"run_results: no finished runs to report in {R.summary_dir(args.preset)}", file=sys.stderr)
        return 1

    S.banner(clock, f"report from the committed summaries of seeds {list(seed_runs)}")
    first = next(iter(seed_runs))
    merged = R.merge_seeds(seed_runs)
    R.plot_wer_bars(merged, plots_dir / "wer.png", "wer", f"WER, mean ± std over seeds {list(seed_runs)} "
                                                           f"({args.preset} preset)")
    R.plot_wer_bars(merged, plots_dir / "cer.png", "cer", f"CER, mean ± std over seeds {list(seed_runs)} "
                                                           f"({args.preset} preset)")
    curves = OrderedDict()
    for seed, run in seed_runs.items():
        for name, parsed in run["logs"].items():
            curves[f"{name} seed {seed}"] = parsed
    R.plot_pretraining(curves, plots_dir / "pretraining_curves.png",
                       f"pretraining curves ({args.preset} preset): lines = train, dots = valid")
    probes = OrderedDict((f"seed {seed}", run["probe"]) for seed, run in seed_runs.items() if run.get("probe"))
    if probes:
        R.plot_probe(probes, plots_dir / "probe.png", "label quality over pretraining (test_seen; solid = enhanced, "
                                                      "dashed = anchor)")
    if ablation_runs:
        abl = OrderedDict([("BiRQ (reference)", seed_runs[first]["logs"].get("BiRQ"))])
        abl.update((name, run["logs"].get("BiRQ")) for name, run in ablation_runs.items())
        R.plot_pretraining(OrderedDict((k, v) for k, v in abl.items() if v), plots_dir / "ablation_curves.png",
                           "BiRQ ablations (seed %d): lines = train, dots = valid" % first)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "preset": args.preset, "settings": preset,
           "seeds": {s: {k: v for k, v in r.items() if k != "logs"} for s, r in seed_runs.items()},
           "ablations": {n: {k: v for k, v in r.items() if k != "logs"} for n, r in ablation_runs.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md_path = Path(args.results_md).resolve()
    md_path.write_text(results_md(args.preset, preset, corpus_dir, os.path.relpath(plots_dir, md_path.parent)))
    print(R.wer_table(merged, "wer"))
    print()
    print(R.wer_table(merged, "cer"))
    print(f"\nwrote {args.results_md}, {out / 'results.json'} and plots in {plots_dir}")
    S.banner(clock, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
