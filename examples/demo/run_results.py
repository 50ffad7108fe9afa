#!/usr/bin/env python
"""Multi-seed comparison BiRQ / BEST-RQ / no pretraining, plus BiRQ ablations -> RESULTS.md.

    .venv/bin/python examples/demo/run_results.py                       # make results
    .venv/bin/python examples/demo/run_results.py --preset large --seeds 1 2 3
    .venv/bin/python examples/demo/run_results.py --preset quick --seeds 1 2 --ablations k1 stopgrad

Each seed is one full demo pipeline (examples/demo/demo_lib.py: corpus, pretraining of
BiRQ and BEST-RQ with the same budget, the untrained init, CTC finetuning of all three,
fairseq-generate WER on seen and unseen voices) in OUT/seed<N>; ablations are BiRQ-only
pretraining runs (seed of the first seed, same budget) in OUT/ablations/<name>, with
finetuning and decoding too unless --ablation-pretrain-only. Everything is resumable:
rerunning skips finished stages.

Each finished seed (and ablation) also leaves a small summary in
examples/demo/results/runs/<preset>/ (results, diagnostics, training curves, timings,
commands; no checkpoints), which is committed. RESULTS.md is written from every committed
summary of the preset, so seeds can run in separate sessions or machines and the report
aggregates them (`--report-only` runs nothing). The hand-written analysis is kept in
examples/demo/results_analysis.md and included.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_lib as D  # noqa: E402

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
    p.add_argument("--preset", choices=list(D.PRESETS), default="default")
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
    p.add_argument("--results-md", default=str(D.REPO / "RESULTS.md"))
    p.add_argument("--plots-dir", default=str(D.REPO / "examples" / "demo" / "results"),
                   help="where RESULTS.md's plots are copied (kept in the repository)")
    p.add_argument("--report-only", action="store_true", help="only rewrite RESULTS.md from finished runs")
    p.add_argument("--ablations-only", action="store_true",
                   help="run only the ablations (e.g. in parallel with a seeds-only invocation); no report")
    return p


def final_diagnostics(log_path: Path) -> dict:
    if not Path(log_path).exists():
        return {}
    parsed = D.parse_fairseq_log(log_path)
    out = {}
    if parsed["train"]:
        last = parsed["train"][-1]
        out["train"] = {k: last.get(k) for k in ("num_updates", "anchor_acc", "anchor_code_ppl", "enhanced_acc",
                                                 "enhanced_code_ppl", "gumbel_temp", "gamma", "penalty_gap")}
        ppl = [r.get("enhanced_code_ppl") for r in parsed["train"] if r.get("enhanced_code_ppl") is not None]
        out["enhanced_code_ppl_min"] = min(ppl) if ppl else None
        out["enhanced_code_ppl_first"] = ppl[0] if ppl else None
    if parsed["valid"]:
        last = parsed["valid"][-1]
        out["valid"] = {k: last.get(k) for k in ("num_updates", "anchor_acc", "enhanced_acc", "enhanced_code_ppl")}
    return out


CURVE_KEYS = ("num_updates", "anchor_acc", "anchor_code_ppl", "anchor_loss", "enhanced_acc", "enhanced_code_ppl",
              "enhanced_loss", "penalty_gap", "gumbel_temp")


def compact_logs(logs: dict) -> dict:
    """The training curves a report needs, without the rest of fairseq's log records."""
    return {name: {split: [{k: r[k] for k in CURVE_KEYS if k in r} for r in records]
                   for split, records in parsed.items()} for name, parsed in logs.items()}


def summary_dir(preset_name: str) -> Path:
    return D.REPO / "examples" / "demo" / "results" / "runs" / preset_name


def save_summary(preset_name: str, key: str, run: dict) -> Path:
    path = summary_dir(preset_name) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_summaries(preset_name: str):
    """Committed per-seed and per-ablation summaries of a preset: ({seed: run}, {name: run})."""
    seeds, ablations = OrderedDict(), OrderedDict()
    directory = summary_dir(preset_name)
    for path in sorted(directory.glob("seed*.json"), key=lambda p: int(p.stem[4:])):
        seeds[int(path.stem[4:])] = json.loads(path.read_text())
    for path in sorted(directory.glob("ablation_*.json")):
        ablations[path.stem[len("ablation_"):]] = json.loads(path.read_text())
    return seeds, ablations


def fmt(v, nd=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def ratio_rows(results) -> List[str]:
    """Headline ratios of mean CER: BEST-RQ / no pretraining and BiRQ / BEST-RQ, per test set,
    with whether the gap exceeds the seed spread (|difference of means| > the larger std)."""
    rows = []
    for num, den, target in (("bestrq", "none", 0.8), ("birq", "bestrq", 0.95), ("birq", "none", None)):
        if num not in results or den not in results:
            continue
        cells = []
        for test in D.TEST_SETS:
            a = [r["cer"] for r in results[num].get(test, [])]
            b = [r["cer"] for r in results[den].get(test, [])]
            if not a or not b:
                cells.append("–")
                continue
            (ma, sa), (mb, sb) = D.mean_std(a), D.mean_std(b)
            beyond = abs(ma - mb) > max(sa, sb)
            cells.append(f"{ma / mb:.3f} ({'gap > seed std' if beyond else 'within seed std'})")
        label = f"CER {D.SYSTEM_LABELS[num]} / {D.SYSTEM_LABELS[den]}"
        goal = f"≤ {target}" if target else "–"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    return rows


def write_results_md(args, preset, out: Path, seed_runs, ablation_runs, corpus, commands, plots_dir: Path) -> None:
    md_dir = Path(args.results_md).resolve().parent
    rel_plots = Path(os.path.relpath(plots_dir, md_dir))
    lines = []
    add = lines.append
    add("# Results: BiRQ vs BEST-RQ vs no pretraining (synthesised multi-voice corpus, CPU)\n")
    add(f"Generated by `examples/demo/run_results.py --report-only` on {time.strftime('%Y-%m-%d %H:%M %Z')} from "
        f"the committed run summaries in `{os.path.relpath(summary_dir(args.preset), D.REPO)}` (one JSON per seed and "
        "ablation: results, diagnostics, training curves, commands, code version). Every number below comes from "
        "a real run in this repository on the project's 2-core CPU machine. The headline, what was tried and "
        "why BiRQ does not beat BEST-RQ here are in the hand-written section "
        "[What we saw](#what-we-saw-hand-written-session-of-2026-12-01) below the tables.\n")
    add("## Scale actually run\n")
    add(f"- preset `{args.preset}`: {json.dumps({k: v for k, v in preset.items() if k != 'model'})}")
    add(f"- model (same for every system): {json.dumps(preset['model'])} "
        "(examples/pretrain/tiny_birq.yaml otherwise, i.e. the paper's BiRQ settings: w1 = 0.1, w2 = 2.4, "
        "Gumbel τ = 0.5, k = round(0.7 L); BEST-RQ = `model.enhanced_stream=false`)")
    add(f"- seeds: {', '.join(str(s) for s in seed_runs)} (training seed of pretraining and finetuning; the corpus "
        f"is seed {corpus.get('seed')}); code versions: "
        f"{', '.join(sorted({str(r.get('code_version')) for r in seed_runs.values()}))}")
    add("- this is a small-scale study on synthesised speech, not a reproduction of the paper's LibriSpeech "
        "numbers.\n")

    results = OrderedDict()
    for seed, run in seed_runs.items():
        for system, per_test in run["results"].items():
            for test, r in per_test.items():
                results.setdefault(system, OrderedDict()).setdefault(test, []).append(r)
    add("## CER and WER (%) on seen and unseen voices, mean ± std over seeds\n")
    add("Greedy CTC decoding by `fairseq-generate --task birq_finetuning --scoring wer --post-process letter`, "
        "checkpoint_last of each finetuning run; CER from the same decodes' H-/T- lines.\n")
    add(D.wer_table(results, "cer") + "\n")
    add(D.wer_table(results, "wer") + "\n")
    ratios = ratio_rows(results)
    if ratios:
        add("Ratios of mean CER (the issue's targets in the last column):\n")
        add("| ratio | seen voices | unseen voices | target |")
        add("| --- | ---: | ---: | --- |")
        lines.extend(ratios)
        add("")
    add("Per seed (valid CER is what recipes were chosen on; test sets were never used for a choice):\n")
    add("| seed | system | valid CER | seen CER | unseen CER | seen WER | unseen WER |")
    add("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for seed, run in seed_runs.items():
        for system in D.TABLE_ROWS:
            r = run["results"].get(system)
            if r:
                valid = f"{r['valid']['cer']:.1f}" if "valid" in r else "–"
                add(f"| {seed} | {D.SYSTEM_LABELS[system]} | {valid} | {r['test_seen']['cer']:.1f} | "
                    f"{r['test_unseen']['cer']:.1f} | {r['test_seen']['wer']:.1f} | {r['test_unseen']['wer']:.1f} |")
    add("")
    add(f"![CER]({rel_plots}/cer.png) ![WER]({rel_plots}/wer.png)\n")

    probes = [(seed, run["probe"]) for seed, run in seed_runs.items() if run.get("probe")]
    if probes:
        add("## Label quality over pretraining (probe)\n")
        add("`python -m birq_fairseq probe` on test_seen: frame codes of each saved pretraining checkpoint "
            "against characters force-aligned (torchaudio `forced_align`) by the supervised topline of the same "
            "seed. PNMI = I(char; code) / H(char) (HuBERT's measure); `chance` is the same with the codes "
            "shuffled over frames (the plug-in estimate is biased upwards), so compare PNMI − chance. "
            "Char purity = accuracy of guessing the character from the code.\n")
        add("The anchor labels are fixed (a frozen quantizer of the input), so they are shown once per seed; the "
            "enhanced labels at every saved checkpoint of BiRQ's pretraining (update 1: the untrained init, "
            "BiRQ's own starting point).\n")
        add("| seed | codes | update | PNMI | PNMI chance | PNMI − chance | char purity | code ppl |")
        add("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")

        def row(seed, what, point, m):
            add(f"| {seed} | {what} | {point.get('num_updates')} | {m['pnmi']:.3f} | {m['pnmi_chance']:.3f} | "
                f"{m['pnmi'] - m['pnmi_chance']:.3f} | {m['char_purity']:.3f} | {m['code_perplexity']:.1f} |")

        for seed, probe in probes:
            series = [p for system in ("bestrq", "birq") for p in D.as_list(probe.get(system) or [])]
            anchor = next((p for p in series if "anchor" in p.get("streams", {})), None)
            if anchor:
                row(seed, "anchor (BEST-RQ's labels)", anchor, anchor["streams"]["anchor"])
            seen = set()
            for point in D.as_list(probe.get("birq") or []):
                if "enhanced" in point.get("streams", {}) and point.get("num_updates") not in seen:
                    seen.add(point.get("num_updates"))
                    row(seed, "BiRQ enhanced", point, point["streams"]["enhanced"])
        add("")
        add(f"![probe]({rel_plots}/probe.png)\n")

    add("## Pretraining diagnostics (end of pretraining, last logged training interval)\n")
    add("| seed | system | anchor acc | anchor code ppl | enhanced acc | enhanced code ppl (first → min → last) | "
        "valid enhanced code ppl |")
    add("| ---: | --- | ---: | ---: | ---: | --- | ---: |")
    for seed, run in seed_runs.items():
        for system in ("bestrq", "birq"):
            d = run["diagnostics"].get(system) or {}
            t, v = d.get("train", {}), d.get("valid", {})
            enh = (f"{fmt(d.get('enhanced_code_ppl_first'))} → {fmt(d.get('enhanced_code_ppl_min'))} → "
                   f"{fmt(t.get('enhanced_code_ppl'))}" if t.get("enhanced_code_ppl") is not None else "–")
            add(f"| {seed} | {D.SYSTEM_LABELS[system]} | {fmt(t.get('anchor_acc'))} | {fmt(t.get('anchor_code_ppl'))} "
                f"| {fmt(t.get('enhanced_acc'))} | {enh} | {fmt(v.get('enhanced_code_ppl'))} |")
    add("")
    add(f"![pretraining curves]({rel_plots}/pretraining_curves.png)\n")

    if ablation_runs:
        first_seed = next(iter(seed_runs))
        add("## BiRQ ablations (seed %d, same pretraining budget and finetuning recipe)\n" % first_seed)
        add("Enhanced PNMI − chance: the probe (as above) on the final pretraining checkpoint, aligned by the "
            "supervised topline of the run's seed. CER on valid is what a choice would be made on.\n")
        add("| run | change | enhanced code ppl (first → min → last) | enhanced acc | anchor acc | "
            "enhanced PNMI − chance | valid CER | CER seen | CER unseen | WER seen | WER unseen |")
        add("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = seed_runs[first_seed]
        rows = [("BiRQ (reference)", "the paper's settings, as above", base)]
        rows += [(name, (ABLATIONS[name][0] if name in ABLATIONS else run.get("description", ""))
                  + (f" (seed {run['seed']})" if run.get("seed", first_seed) != first_seed else ""), run)
                 for name, run in ablation_runs.items()]
        for name, desc, run in rows:
            d, r = run["diagnostics"].get("birq") or {}, run["results"].get("birq")
            t = d.get("train", {})
            enh = (f"{fmt(d.get('enhanced_code_ppl_first'))} → {fmt(d.get('enhanced_code_ppl_min'))} → "
                   f"{fmt(t.get('enhanced_code_ppl'))}")
            series = (run.get("probe") or {}).get("birq") or []
            final = D.as_list(series)[-1]["streams"].get("enhanced") if series else None
            pnmi = f"{final['pnmi'] - final['pnmi_chance']:.3f}" if final else "–"
            w = (lambda test, m: f"{r[test][m]:.1f}" if r and test in r else "–")
            add(f"| {name} | {desc} | {enh} | {fmt(t.get('enhanced_acc'))} | {fmt(t.get('anchor_acc'))} | {pnmi} | "
                f"{w('valid', 'cer')} | {w('test_seen', 'cer')} | {w('test_unseen', 'cer')} | "
                f"{w('test_seen', 'wer')} | {w('test_unseen', 'wer')} |")
        add("")
        add(f"![ablation curves]({rel_plots}/ablation_curves.png)\n")

    grid = D.REPO / "examples" / "demo" / "regime" / "grid.md"
    if grid.exists():
        add("## How the regime was chosen: the grid (seed 1)\n")
        add("Written by `examples/demo/regime_grid.py --report` from the committed summaries in "
            "`examples/demo/regime/` (each run's settings are in its JSON; `regime_grid.py --list` prints them; "
            "recipes r1/r2/r3 are defined in that script). 6 h unlabelled pool (`data/tts_large`), labelled "
            "subsets are prefixes of its 1000-utterance finetune split.\n")
        add(grid.read_text().rstrip() + "\n")

    analysis = D.REPO / "examples" / "demo" / "results_analysis.md"
    if analysis.exists():
        add(analysis.read_text().rstrip() + "\n")

    add("## Corpus (from corpus.json)\n")
    add(f"`{corpus.get('_dir')}`: preset `{corpus.get('size')}`, seed {corpus.get('seed')}, "
        f"{corpus.get('total_utterances')} utterances, {corpus.get('total_hours')} h; "
        f"engines {json.dumps(corpus.get('engine_versions', {}))}.\n")
    add("| split | utterances | hours | mean s | labelled | voices |")
    add("| --- | ---: | ---: | ---: | --- | ---: |")
    for split, st in (corpus.get("splits") or {}).items():
        add(f"| {split} | {st['utterances']} | {st['hours']} | {st['mean_seconds']} | {st['labelled']} | "
            f"{len(st.get('voices', {}))} |")
    add(f"\nSeen voices ({len(corpus.get('seen_voices', []))}): {', '.join(corpus.get('seen_voices', []))}.\n")
    add(f"Unseen voices ({len(corpus.get('unseen_voices', []))}, only in test_unseen): "
        f"{', '.join(corpus.get('unseen_voices', []))}.\n")

    add("## Timings (wall seconds / CPU seconds of the fairseq subprocesses)\n")
    add("Measured while other jobs shared the 2 cores, so wall times are pessimistic; CPU seconds are the "
        "better estimate of an unloaded run.\n")
    add("| run | stage | wall s | CPU s |")
    add("| --- | --- | ---: | ---: |")
    for name, run in list(seed_runs.items()) + list(ablation_runs.items()):
        total_w = total_c = 0.0
        for stage, t in run["timings"].items():
            add(f"| {name} | {stage} | {t['wall_seconds'] or 0:.0f} | {t['cpu_seconds'] or 0:.0f} |")
            total_w += t["wall_seconds"] or 0
            total_c += t["cpu_seconds"] or 0
        add(f"| {name} | **total** | **{total_w:.0f}** | **{total_c:.0f}** |")
    add("")
    add("## Exact commands\n")
    add("Regenerate a seed (from a clean clone: builds the corpus, ~30-80 min on 2 cores; resumable) and the report "
        "from the committed seeds:\n")
    add("```")
    add(f"make results SEEDS=1            # = .venv/bin/python examples/demo/run_results.py --preset {args.preset} "
        "--seeds 1 --out demo_runs/results")
    add(f"make results SEEDS=1 ABLATIONS='{' '.join(ablation_runs) or 'stopgrad'}'   # + BiRQ ablations on seed 1")
    add("make results-report             # RESULTS.md from examples/demo/results/runs/regime/*.json only")
    add(".venv/bin/python examples/demo/regime_grid.py --runs <name>...   # a grid run; --list names them, "
        "--report writes grid.md")
    add("```\n")
    add("This report was written by:\n")
    add("```")
    add(" ".join(shlex.quote(a) for a in [".venv/bin/python", "examples/demo/run_results.py"] + sys.argv[1:]))
    add("```\n")
    add("Each stage's fairseq command as recorded in the summary of seed %d (other seeds differ only in "
        "`common.seed` and directories; absolute paths are where that run's data and run directories were):\n"
        % max(seed_runs))
    add("```")
    for c in commands:
        add(c.replace(str(D.REPO) + "/", ""))
    add("```")
    Path(args.results_md).write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    preset = D.resolve_preset(args)
    out = Path(args.out or D.REPO / "results_runs" / args.preset).resolve()
    corpus_dir = Path(args.corpus_dir or D.REPO / "data" / f"tts_{preset['corpus']}").resolve()
    plots_dir = Path(args.plots_dir).resolve()
    plots_dir.mkdir(parents=True, exist_ok=True)
    unknown = [a for a in args.ablations if a not in ABLATIONS]
    if unknown:
        print(f"run_results: unknown ablations {unknown}; choose from {list(ABLATIONS)}", file=sys.stderr)
        return 2
    clock = D.Clock()
    D.banner(clock, f"BiRQ results: preset {args.preset}, seeds {args.seeds}, ablations {args.ablations} -> {out}")

    def stage_commands(pipe):  # in the order the stages ran
        markers = [pipe.stages.load(p.stem) for p in pipe.stages.dir.glob("*.json")]
        markers = sorted((m for m in markers if m and m.get("command")), key=lambda m: m.get("finished", ""))
        return [m["command"].replace(str(D.REPO) + "/", "") for m in markers]

    def common_fields(summary):
        return {"preset": args.preset, "settings": preset, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "code_version": D.git_version(),
                "corpus": {k: summary["corpus"].get(k) for k in ("size", "seed", "counts", "total_hours", "splits",
                                                                 "seen_voices", "unseen_voices", "engine_versions")}}

    try:
        for seed in ([] if args.ablations_only or args.report_only else args.seeds):
            pipe = D.Pipeline(out / f"seed{seed}", preset, corpus_dir, preset["corpus"], seed=seed, clock=clock,
                              threads=args.threads)
            D.banner(clock, f"seed {seed}")
            summary = pipe.run()
            run = dict(common_fields(summary), seed=seed, results=summary["results"], timings=summary["timings"],
                       diagnostics={s: final_diagnostics(pipe.out / "pretrain" / s / "train.log")
                                    for s in ("birq", "bestrq")},
                       logs=compact_logs(pipe.pretrain_logs()), commands=stage_commands(pipe),
                       probe=summary.get("probe"))
            print(f"   wrote {save_summary(args.preset, f'seed{seed}', run)} (commit it)", flush=True)
        first = args.seeds[0]
        # ablations run on the first seed given; seeds other than 1 (to check an ablation's
        # finding) get their own run directory and summary, "<name>_seed<N>"
        for name in ([] if args.report_only else args.ablations):
            extra = ablation_overrides(name, preset)
            key = name if first == 1 else f"{name}_seed{first}"
            pipe = D.Pipeline(out / "ablations" / key, preset, corpus_dir, preset["corpus"], seed=first, clock=clock,
                              threads=args.threads, birq_overrides=extra, systems=["birq"],
                              aligner=out / f"seed{first}" / "finetune" / "topline" / "checkpoint_last.pt")
            D.banner(clock, f"ablation {name}: {ABLATIONS[name][0]}")
            summary = pipe.run(pretrain_only=args.ablation_pretrain_only)
            run = dict(common_fields(summary), seed=first, description=ABLATIONS[name][0], overrides=extra,
                       results=summary["results"], timings=summary["timings"],
                       diagnostics={"birq": final_diagnostics(pipe.out / "pretrain" / "birq" / "train.log")},
                       logs=compact_logs(pipe.pretrain_logs()), commands=stage_commands(pipe),
                       probe=summary.get("probe"))
            print(f"   wrote {save_summary(args.preset, f'ablation_{key}', run)} (commit it)", flush=True)
    except D.StageFailed as e:
        print(f"\nrun_results: {e}\nrun_results: rerun the same command to resume.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun_results: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    if args.ablations_only:
        D.banner(clock, "ablations done (no report: rerun with --report-only)")
        return 0
    seed_runs, ablation_runs = load_summaries(args.preset)
    if not seed_runs:
        print(f"run_results: no finished runs to report in {summary_dir(args.preset)}", file=sys.stderr)
        return 1

    D.banner(clock, f"report from the committed summaries of seeds {list(seed_runs)}")
    first = next(iter(seed_runs))
    latest = seed_runs[max(seed_runs)]
    corpus = dict(latest["corpus"])
    corpus["_dir"] = str(corpus_dir.relative_to(D.REPO) if corpus_dir.is_relative_to(D.REPO) else corpus_dir)
    commands = latest.get("commands", [])
    merged = OrderedDict()
    for run in seed_runs.values():
        for system, per_test in run["results"].items():
            for test, r in per_test.items():
                merged.setdefault(system, OrderedDict()).setdefault(test, []).append(r)
    D.plot_wer_bars(merged, plots_dir / "wer.png", "wer", f"WER, mean ± std over seeds {list(seed_runs)} "
                                                           f"({args.preset} preset)")
    D.plot_wer_bars(merged, plots_dir / "cer.png", "cer", f"CER, mean ± std over seeds {list(seed_runs)} "
                                                           f"({args.preset} preset)")
    curves = OrderedDict()
    for seed, run in seed_runs.items():
        for name, parsed in run["logs"].items():
            curves[f"{name} seed {seed}"] = parsed
    D.plot_pretraining(curves, plots_dir / "pretraining_curves.png",
                       f"pretraining curves ({args.preset} preset): lines = train, dots = valid")
    probes = OrderedDict((f"seed {seed}", run["probe"]) for seed, run in seed_runs.items() if run.get("probe"))
    if probes:
        D.plot_probe(probes, plots_dir / "probe.png", "label quality over pretraining (test_seen; solid = enhanced, "
                                                      "dashed = anchor)")
    if ablation_runs:
        abl = OrderedDict([("BiRQ (reference)", seed_runs[first]["logs"].get("BiRQ"))])
        abl.update((name, run["logs"].get("BiRQ")) for name, run in ablation_runs.items())
        D.plot_pretraining(OrderedDict((k, v) for k, v in abl.items() if v), plots_dir / "ablation_curves.png",
                           "BiRQ ablations (seed %d): lines = train, dots = valid" % first)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "preset": args.preset, "settings": preset,
           "seeds": {s: {k: v for k, v in r.items() if k != "logs"} for s, r in seed_runs.items()},
           "ablations": {n: {k: v for k, v in r.items() if k != "logs"} for n, r in ablation_runs.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    write_results_md(args, preset, out, seed_runs, ablation_runs, corpus, commands, plots_dir)
    print(D.wer_table(merged, "wer"))
    print()
    print(D.wer_table(merged, "cer"))
    print(f"\nwrote {args.results_md}, {out / 'results.json'} and plots in {plots_dir}")
    D.banner(clock, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
