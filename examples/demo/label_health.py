#!/usr/bin/env python
"""Does BiRQ's enhanced label stream stay healthy over long pretraining? (issue "BiRQ's
enhanced labels must refine, not collapse")

    .venv/bin/python examples/demo/label_health.py --list
    .venv/bin/python examples/demo/label_health.py --runs argmax_sinkhorn:1 argmax_sinkhorn:2 ...
    .venv/bin/python examples/demo/label_health.py --report     # summaries -> label_health/health.md + plot

Each run is a label-generator variant (VARIANTS: BiRQ overrides on tiny_birq.yaml) and a
seed, pretrained on the demo's default corpus with the demo's own stages
(``pipeline.Pipeline``: same override builder, resumable stages, 8 s batches, one thread)
for --updates updates (30 k by default: 10x the regime's), checkpoints kept every 2500
updates. The label-quality probe (``birq-fairseq probe``) then scores every kept checkpoint
on the *valid* split against characters force-aligned by a supervised CTC model trained on
the corpus's 300 labelled utterances from the seeded initialisation (the "aligner" stage,
shared by all runs). Choices are made on valid only.

A finished run writes examples/demo/label_health/<variant>_seed<N>.json (committed): the
training curves of both streams at every log interval, the probe over training, and the
health verdict (``health``):
  - enhanced code perplexity >= half the anchor's at every logged interval,
  - enhanced masked-prediction accuracy well above chance: >= 3 x (1 / the labels' own code
    perplexity) over the last 10 % of updates (a collapsed stream is "predicted" at 0.9 with a
    perplexity of 2: not above chance; Gumbel noise at 0.01 with a perplexity of 45: neither),
  - enhanced PNMI - chance above the anchor's at the end, and rising (last > first trained
    checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as P  # noqa: E402
import stages as S  # noqa: E402

SUMMARY_DIR = S.REPO / "examples" / "demo" / "label_health"
CORPUS_PRESET = "default"
PROBE_SPLIT = "valid"

# Label-generator variants: BiRQ overrides on tiny_birq.yaml (the paper's w1, w2, tau_g = 0.5,
# k = round(0.7 L), label gradient on unless said). Where each idea comes from: docs/method.md.
# "++": the keys may be in tiny_birq.yaml or not (hydra's "+" fails on a key the file sets)
BALANCED = ["++model.enhanced_selection=argmax", "++model.enhanced_sinkhorn_iters=3"]
# the paper's selection (a hard Gumbel sample, no balancing), pinned whatever the defaults are
GUMBEL = ["++model.enhanced_selection=gumbel", "++model.enhanced_sinkhorn_iters=0"]
VARIANTS: "OrderedDict[str, List[str]]" = OrderedDict([
    # the paper's settings as the defaults had them: layer norm, cosine / 0.1 logits, hard Gumbel
    # sample, no balancing (pinned with "++", so it keeps its meaning whatever the defaults)
    ("literal", GUMBEL + ["++model.enhanced_feature_norm=layer", "++model.similarity_temp=0.1"]),
    # the lead: argmax forward on Sinkhorn-balanced logits, Gumbel-softmax gradient backward
    ("argmax_sinkhorn", BALANCED),
    # ... with z^(k) instance-normed over time per utterance (data2vec, DinoSR)
    ("argmax_sinkhorn_instance", BALANCED + ["++model.enhanced_feature_norm=instance"]),
    # ... with BEST-RQ's 8192-entry codebooks for both streams
    ("argmax_sinkhorn_8192", BALANCED + ["model.enhanced_codebook_size=8192", "model.anchor_codebook_size=8192"]),
    # ... with one conv-subsampling pass shared by the generator and the main pass (the Conformer
    # cost lever of examples/benchmarks: masking after the subsampling)
    ("argmax_sinkhorn_shared", BALANCED + ["++model.mask_after_subsampling=true"]),
    # the paper's selection (Gumbel sample) with a softer cosine logit, between 0.1 (collapse) and 0.5 (noise)
    ("cos02", GUMBEL + ["++model.similarity_temp=0.2"]),
    # instance norm alone, Gumbel sample at tau_c = 0.2
    ("instance_cos02", GUMBEL + ["++model.enhanced_feature_norm=instance", "++model.similarity_temp=0.2"]),
    # the paper's lr 1e-4 (fairseq's Adam = AdamW), the upper level switched on after the lr warm-up
    ("lr1e4_warmup", GUMBEL + ["optimization.lr=[0.0001]", "++criterion.enhanced_start_updates={WARMUP}"]),
    # the baseline the label gradient is measured against
    ("stopgrad", GUMBEL + ["++model.enhanced_label_grad=false"]),
    # BEST-RQ, the same model and budget without the enhanced stream: the anchor-only reference for
    # the frozen evaluation (no enhanced labels, so no health verdict)
    ("bestrq", ["model.enhanced_stream=false"]),
])


def parse_run(text: str):
    name, _, seed = text.partition(":")
    if name not in VARIANTS or not seed.isdigit():
        raise ValueError(f"run {text!r}: expected VARIANT:SEED with VARIANT in {list(VARIANTS)}")
    return name, int(seed)


def preset(updates: int) -> dict:
    return dict(corpus=CORPUS_PRESET, pretrain_updates=updates, finetune_updates=2000, max_tokens=128000,
                log_interval=100, model=P.MODEL_SMALL, probe=True, save_interval_updates=max(updates // 12, 5),
                finetune_overrides=P.FT_FAST, topline=True)


def corpus_dir() -> Path:
    return S.REPO / "data" / f"tts_{CORPUS_PRESET}"


# The aligner is shared by every run, whatever its length: its settings must not depend on --updates
# (the preset's pretraining fields enter the init stage's signature; 30 k is what it was built with).
ALIGNER_PRESET_UPDATES = 30000


def aligner(out: Path, threads: int) -> Path:
    """Supervised CTC on all labelled utterances from the seeded init (the probe's aligner)."""
    pipe = P.Pipeline(out / "aligner", preset(ALIGNER_PRESET_UPDATES), corpus_dir(), CORPUS_PRESET, seed=1,
                      threads=threads, systems=("none",))
    pipe.corpus()
    return pipe.finetune("topline", pipe.pretrain("none"))


def variant_overrides(name: str, updates: int) -> List[str]:
    return [o.replace("{WARMUP}", str(max(updates // 10, 1))) for o in VARIANTS[name]]


def pipeline(out: Path, name: str, seed: int, updates: int, threads: int, align: Path) -> P.Pipeline:
    return P.Pipeline(out / f"{name}_seed{seed}", preset(updates), corpus_dir(), CORPUS_PRESET, seed=seed,
                      threads=threads, overrides={"birq": variant_overrides(name, updates)}, systems=("none", "birq"),
                      aligner=align)


def run(out: Path, name: str, seed: int, updates: int, threads: int, frozen: bool = False) -> dict:
    pipe = pipeline(out, name, seed, updates, threads, aligner(out, threads))
    pipe.pretrain("none")  # update 0 of the probe curve: the same seeded initialisation
    pipe.pretrain("birq")
    pipe.probe(PROBE_SPLIT)
    if frozen:
        frozen_evals(pipe)
    return write_summary(pipe, name, seed, updates)


def frozen_evals(pipe: P.Pipeline) -> None:
    """The frozen evaluation of a finished run's initialisation and final checkpoint."""
    if (pipe.stages.load("pretrain_birq") or {}).get("status") != "done":
        raise SystemExit(f"label_health: {pipe.out} has no finished pretraining: run it first")
    pipe.frozen("init", pipe.out / "pretrain" / "none" / "checkpoint_last.pt")
    pipe.frozen("final", pipe.out / "pretrain" / "birq" / "checkpoint_last.pt")


def write_summary(pipe: P.Pipeline, name: str, seed: int, updates: int) -> dict:
    """The committed summary of a run whose pretraining and probe stages are finished (read
    from its run directory; runs nothing)."""
    pretrain, probe = pipe.stages.load("pretrain_birq") or {}, pipe.stages.load(f"probe_birq_{PROBE_SPLIT}") or {}
    if pretrain.get("status") != "done" or "result" not in probe:
        raise SystemExit(f"label_health: {pipe.out} has no finished pretraining and probe: run it first")
    summary = summarise(name, seed, updates, S.parse_fairseq_log(pipe.out / "pretrain" / "birq" / "train.log"),
                        probe["result"], pretrain)
    frozen = {tag: P.frozen_rows(m["result"]) for tag in ("init", "final")
              if (m := pipe.stages.load(f"frozen_{tag}")) and "result" in m}
    if frozen:
        summary["frozen"] = frozen
    SUMMARY_DIR.mkdir(parents=True, exist_ok=True)
    path = SUMMARY_DIR / f"{name}_seed{seed}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"-- {name} seed {seed}: healthy={summary['health']['healthy']} -> {path}", flush=True)
    return summary


ACC_OVER_CHANCE = 3.0
CURVE_KEYS = ("anchor_loss", "anchor_acc", "anchor_code_ppl", "enhanced_loss", "enhanced_acc", "enhanced_code_ppl",
              "penalty_gap")


def summarise(name: str, seed: int, updates: int, log: Dict[str, List[dict]], probe: List[dict],
              marker: dict) -> dict:
    train = [r for r in log["train"] if "num_updates" in r]
    curves = OrderedDict((k, [r.get(k) for r in train]) for k in ("num_updates",) + CURVE_KEYS)
    probe_rows = [OrderedDict(
        num_updates=p.get("num_updates"),
        **{f"{s}_{m}": p["streams"][s][m] for s in ("anchor", "enhanced") if s in p.get("streams", {})
           for m in ("pnmi", "pnmi_chance", "char_purity", "code_perplexity")}) for p in probe]
    return OrderedDict(variant=name, seed=seed, updates=updates, overrides=variant_overrides(name, updates),
                       command=S.repo_relative(marker.get("command", "")),
                       corpus=CORPUS_PRESET, probe_split=PROBE_SPLIT, curves=curves, probe=probe_rows,
                       health=health(curves, probe_rows),
                       timing={k: marker.get(k) for k in ("wall_seconds", "cpu_seconds")},
                       date=time.strftime("%Y-%m-%d %H:%M:%S"))


def health(curves: dict, probe: List[dict], codebook_size: Optional[int] = None) -> dict:
    """The issue's three measures on one run's curves and probe (see the module doc)."""
    enh, anc = curves["enhanced_code_ppl"], curves["anchor_code_ppl"]
    if all(e is None for e in enh):
        return OrderedDict(healthy=None, note="no enhanced stream (BEST-RQ)")
    pairs = [(e, a) for e, a in zip(enh, anc) if e is not None and a is not None]
    min_ratio = min(e / a for e, a in pairs) if pairs else float("nan")
    acc = [a for a in curves["enhanced_acc"] if a is not None]
    tail = acc[-max(len(acc) // 10, 1):]
    tail_acc = sum(tail) / len(tail) if tail else float("nan")
    ppl_tail = [e for e in enh[-max(len(enh) // 10, 1):] if e is not None]
    # chance: 1 / V for uniform labels; the labels' own perplexity bounds a marginal-only predictor better
    chance = 1.0 / (sum(ppl_tail) / len(ppl_tail)) if ppl_tail else float("nan")
    gain = lambda r, s: r[f"{s}_pnmi"] - r[f"{s}_pnmi_chance"]  # noqa: E731
    # the first probe point is the seeded initialisation, written by one update at lr 0
    trained = [r for r in probe if (r.get("num_updates") or 0) > 1 and "enhanced_pnmi" in r]
    end = trained[-1] if trained else None
    result = OrderedDict(
        min_ppl_ratio=round(min_ratio, 3), ppl_ok=bool(min_ratio >= 0.5),
        enhanced_acc_tail=round(tail_acc, 4), acc_chance=round(chance, 4), acc_ok=bool(tail_acc >= ACC_OVER_CHANCE * chance),
    )
    if end:
        result.update(enhanced_pnmi_gain_end=round(gain(end, "enhanced"), 4),
                      anchor_pnmi_gain_end=round(gain(end, "anchor"), 4),
                      enhanced_pnmi_gain_first=round(gain(trained[0], "enhanced"), 4),
                      pnmi_above_anchor=bool(gain(end, "enhanced") > gain(end, "anchor")),
                      pnmi_rising=bool(len(trained) > 1 and gain(end, "enhanced") > gain(trained[0], "enhanced")))
    result["healthy"] = bool(result["ppl_ok"] and result["acc_ok"] and result.get("pnmi_above_anchor")
                             and result.get("pnmi_rising"))
    return result


# --------------------------------------------------------------------------- report
def load_summaries(directory: Path = SUMMARY_DIR) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*_seed*.json"))]


def report(directory: Path = SUMMARY_DIR, write: bool = True) -> str:
    """The health table of every committed summary (Markdown); with ``write``, also
    ``health.md`` and the plot ``health.png`` beside the summaries."""
    rows = load_summaries(directory)
    lines = ["| variant | seed | updates | min enhanced/anchor ppl | enhanced acc (last 10 %) | 3 x chance | "
             "PNMI - chance: enhanced / anchor (end) | enhanced first -> end | healthy |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        h = r["health"]
        if h.get("healthy") is None:
            lines.append(f"| {r['variant']} | {r['seed']} | {r['updates']} | – | – | – | – / "
                         f"{_anchor_gain(r):.3f} | – | – ({h.get('note')}) |")
            continue
        pnmi = (f"{h['enhanced_pnmi_gain_end']:.3f} / {h['anchor_pnmi_gain_end']:.3f}"
                if "enhanced_pnmi_gain_end" in h else "–")
        rise = (f"{h['enhanced_pnmi_gain_first']:.3f} -> {h['enhanced_pnmi_gain_end']:.3f}"
                if "enhanced_pnmi_gain_end" in h else "–")
        lines.append(f"| {r['variant']} | {r['seed']} | {r['updates']} | {h['min_ppl_ratio']:.2f} | "
                     f"{h['enhanced_acc_tail']:.3f} | {ACC_OVER_CHANCE * h['acc_chance']:.3f} | {pnmi} | {rise} | "
                     f"{'yes' if h['healthy'] else 'no'} |")
    frozen = frozen_table(rows)
    if frozen:
        lines += ["", frozen]
    text = "\n".join(lines) + "\n" if rows else "_No label-health summaries committed._\n"
    if write:
        (Path(directory) / "health.md").write_text(text)
        if rows:
            plot(rows, Path(directory) / "health.png")
    return text


def frozen_table(rows: List[dict]) -> str:
    """The frozen evaluation of the runs that have one: PER and CER (%) of linear heads on the
    final checkpoint, and on the same seed's initialisation (the random-init encoder), per test
    set; the mean ± std over seeds where a variant has several."""
    cells = OrderedDict()  # (variant or "random init") -> {metric: [values per seed]}
    for r in rows:
        for tag, label in (("final", r["variant"]), ("init", "random init (the seeds' initialisations)")):
            res = (r.get("frozen") or {}).get(tag)
            if not res:
                continue
            if tag == "init" and any(x["seed"] == r["seed"] for x in cells.get(label, {}).get("_runs", [])):
                continue  # the initialisation depends on the seed only
            c = cells.setdefault(label, {"_runs": []})
            c["_runs"].append(r)
            for key, metric in (("pr_linear", "PER"), ("asr_linear", "CER")):
                for split in ("test_seen", "test_unseen"):
                    if key in res:
                        c.setdefault(f"{metric} {split}", []).append(res[key][split])
    if not cells:
        return ""

    def fmt(values):
        if not values:
            return "–"
        if len(values) == 1:
            return f"{values[0]:.1f}"
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return f"{mean:.1f} ± {std:.1f}"

    cols = ["PER test_seen", "PER test_unseen", "CER test_seen", "CER test_unseen"]
    lines = ["Frozen evaluation (`birq-fairseq superb`, linear heads on a learned weighted sum of all layers, "
             "trained on the 300 labelled utterances, epoch chosen on valid):", "",
             "| upstream | seeds | " + " | ".join(cols) + " |", "| --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for label, c in cells.items():
        seeds = ", ".join(str(x["seed"]) for x in c["_runs"])
        lines.append(f"| {label} | {seeds} | " + " | ".join(fmt(c.get(col, [])) for col in cols) + " |")
    return "\n".join(lines)


def _anchor_gain(row: dict) -> float:
    last = [p for p in row["probe"] if "anchor_pnmi" in p][-1]
    return last["anchor_pnmi"] - last["anchor_pnmi_chance"]


def plot(rows: List[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = list(OrderedDict.fromkeys(r["variant"] for r in rows))
    for r in rows:
        if r["health"].get("healthy") is None:
            continue  # no enhanced stream to plot
        c = colours[variants.index(r["variant"]) % len(colours)]
        label = f"{r['variant']} s{r['seed']}"
        x = r["curves"]["num_updates"]
        axes[0].plot(x, r["curves"]["enhanced_code_ppl"], color=c, lw=1, label=label)
        axes[0].plot(x, r["curves"]["anchor_code_ppl"], color=c, lw=0.6, ls=":")
        axes[1].plot(x, r["curves"]["enhanced_acc"], color=c, lw=1, label=label)
        px = [p["num_updates"] for p in r["probe"] if "enhanced_pnmi" in p]
        axes[2].plot(px, [p["enhanced_pnmi"] - p["enhanced_pnmi_chance"] for p in r["probe"] if "enhanced_pnmi" in p],
                     color=c, marker="o", ms=3, lw=1, label=label)
        axes[2].plot(px, [p["anchor_pnmi"] - p["anchor_pnmi_chance"] for p in r["probe"] if "enhanced_pnmi" in p],
                     color=c, lw=0.6, ls=":")
    axes[0].set(yscale="log", title="code perplexity per batch (solid enhanced, dotted anchor)", xlabel="update")
    axes[1].set(yscale="log", title="enhanced masked-prediction accuracy", xlabel="update")
    axes[2].set(title=f"PNMI - chance on {PROBE_SPLIT} (solid enhanced, dotted anchor)", xlabel="update")
    axes[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="VARIANT:SEED runs, in order (resumable)")
    p.add_argument("--updates", type=int, default=30000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(S.REPO / "results_runs" / "label_health"))
    p.add_argument("--list", action="store_true")
    p.add_argument("--report", action="store_true")
    p.add_argument("--frozen", action="store_true",
                   help="also the frozen evaluation (PER / CER of linear heads) of the init and the final checkpoint")
    p.add_argument("--summarise-only", action="store_true",
                   help="rewrite the runs' summaries from their finished stages (runs nothing)")
    p.add_argument("--frozen-only", action="store_true",
                   help="the frozen evaluation of finished runs, then their summaries (trains nothing)")
    args = p.parse_args(argv)
    if args.list:
        for name in VARIANTS:
            print(f"{name}: {' '.join(variant_overrides(name, args.updates)) or '(tiny_birq.yaml as it is)'}")
        return 0
    try:
        runs = [parse_run(r) for r in args.runs]
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out).resolve()
    for name, seed in runs:
        if args.summarise_only or args.frozen_only:
            pipe = pipeline(out, name, seed, args.updates, args.threads, out / "aligner")
            if args.frozen_only:
                frozen_evals(pipe)
            write_summary(pipe, name, seed, args.updates)
        else:
            run(out, name, seed, args.updates, args.threads, frozen=args.frozen)
    if args.report or runs:
        print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
