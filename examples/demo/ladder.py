#!/usr/bin/env python
"""The pretraining ladder (issue "Measure what pretraining buys"): BEST-RQ and BiRQ over model
size and pretraining length, each rung scored the way the field scores speech SSL.

    .venv/bin/python examples/demo/ladder.py --list
    .venv/bin/python examples/demo/ladder.py --runs medium:bestrq:10000:1 medium:birq:10000:1 medium:none:0:1
    .venv/bin/python examples/demo/ladder.py --report      # summaries -> ladder/ladder.md + ladder.png

A rung is SIZE:SYSTEM:UPDATES:SEED. SIZE is a model of ``SIZES`` (tiny 4x96, medium 6x192,
large 8x256; tiny_birq.yaml otherwise), SYSTEM one of ``SYSTEMS`` (``none`` is the seeded
random initialisation: UPDATES 0). Each rung runs on the demo's stages (``pipeline.Pipeline``:
the same override builders, resumable stages, 8 s batches, one thread), on the demo's default
corpus, and is scored by
  - the frozen evaluation (``birq-fairseq superb``: PER and CER of linear heads over a learned
    weighted sum of all layers, 300 labelled utterances, epoch chosen on valid), and
  - CTC finetuning (``wav2vec_ctc``, the regime's recipes: FT_FAST for no pretraining,
    FT_FROZEN_FIRST for pretrained encoders, chosen on valid in examples/demo/regime) on the
    first 100 and on all 300 labelled utterances, decoded with fairseq-generate on valid and
    both test sets.
``fbank`` (no upstream, the frozen evaluation only) is its own rung: ``--runs fbank``.

A finished rung writes examples/demo/ladder/<rung>.json (committed); ``--report`` draws the table
(mean +- std over seeds) and PER / CER against the audio hours seen in pretraining, one curve per
system and size, random init and fbank as flat lines, and (``targets_report``, in RESULTS.md) the
issue's targets at the 3-seed rungs as per-seed ratios. Choices are made on valid only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_health as LH  # noqa: E402  (the corpus the label-health grid runs on)
import pipeline as P  # noqa: E402
import report as R  # noqa: E402
import stages as S  # noqa: E402

SUMMARY_DIR = S.REPO / "examples" / "demo" / "ladder"
# summaries of examples/reference/speechbrain_bestrq.py --summary (SpeechBrain's BEST-RQ)
REFERENCE_DIR = S.REPO / "examples" / "reference" / "results"
SIZES: "OrderedDict[str, dict]" = OrderedDict([
    ("tiny", P.MODEL_SMALL),  # 4 x 96: the model of every other experiment here
    ("medium", P.MODEL_MEDIUM),  # 6 x 192
    ("large", dict(P.MODEL_MEDIUM, **{"model.encoder_layers": 8, "model.encoder_embed_dim": 256,
                                      "model.encoder_ffn_embed_dim": 1024})),  # 8 x 256
])
# System -> (Pipeline system, that system's overrides, audio per update in units of the demo's 8 s
# batches). BiRQ runs at the defaults (the balanced label generator, docs/method.md#label-generator);
# "stopgrad" is BiRQ with the label gradient stopped.
SYSTEMS: "OrderedDict[str, tuple]" = OrderedDict([
    ("none", ("none", [], 1)),
    ("bestrq", ("bestrq", [], 1)),
    ("birq", ("birq", [], 1)),
    ("stopgrad", ("birq", ["++model.enhanced_label_grad=false"], 1)),
    # BEST-RQ with the paper's (and SpeechBrain's recipe's) 8192-entry codebook instead of
    # tiny_birq.yaml's 256: one of the differences to the reference BEST-RQ (examples/reference)
    ("bestrq8192", ("bestrq", ["++model.anchor_codebook_size=8192"], 1)),
    # BEST-RQ with 4x (8x) the audio per update and the lr scaled by the square root: the throughput
    # lever of examples/benchmarks (issue "Throughput where it matters"), a different training run,
    # compared at equal audio hours. Larger batches lose less to the max_tokens packing (6.3 s of
    # speech per 8 s update, ~30 s per 32 s one), so the updates that see a rung's audio hours are
    # measured, not divided: tiny:bestrq_b4:2100 sees the 17.6 h of tiny:bestrq:10000.
    # The lr scaling is the ladder's (see ``pretrain_lr``), from the batch field.
    ("bestrq_b4", ("bestrq", [], 4)),
    ("bestrq_b8", ("bestrq", [], 8)),
])
BATCH_TOKENS = 128000  # the demo's 8 s of 16 kHz audio per update (finetuning always uses it)
BASE_PRETRAIN_LR = 0.001  # examples/pretrain/tiny_birq.yaml's peak lr
# Peak lrs where a size needs its own. The 8 x 256 model at 1e-3 does not train: BEST-RQ's masked
# accuracy reached 0.21 at 600 updates, fell to 0.13 as the lr reached its peak and stayed there
# to 10 k, and the frozen probe then put 0.89 of its weight on the subsampling output (valid PER
# 70.4 against its random init's 58.1). Pretraining: half the lr. Finetuning: from random init
# the regime's FT_FAST lr (2e-3) never left the all-blank output (valid CER 100 after 2000
# updates), 5e-4 and 2e-4 gave valid CER 50.7 and 53.0 (examples/demo/large_finetune_lr.sh); 5e-4
# is used for the pretrained encoders too (not chosen on them).
PRETRAIN_LR = {"large": 0.0005}
FINETUNE_LR = {"large": 0.0005}
LABELLED = (100, 300)  # CTC finetuning sizes: the first 100 and all 300 labelled utterances
FINETUNE_UPDATES = 2000


def parse_rung(text: str):
    """``SIZE:SYSTEM:UPDATES:SEED`` -> (size, system, updates, seed), or ``fbank``."""
    if text == "fbank":
        return ("fbank",)
    parts = text.split(":")
    if (len(parts) != 4 or parts[0] not in SIZES or parts[1] not in SYSTEMS
            or not parts[2].isdigit() or not parts[3].isdigit()):
        raise ValueError(f"rung {text!r}: expected SIZE:SYSTEM:UPDATES:SEED with SIZE in {list(SIZES)} and "
                         f"SYSTEM in {list(SYSTEMS)}, or 'fbank'")
    size, system, updates, seed = parts[0], parts[1], int(parts[2]), int(parts[3])
    if (system == "none") != (updates == 0):
        raise ValueError(f"rung {text!r}: 'none' (the random initialisation) takes 0 updates, the others > 0")
    return size, system, updates, seed


def rung_name(size: str, system: str, updates: int, seed: int) -> str:
    length = "init" if system == "none" else (f"{updates // 1000}k" if updates % 1000 == 0 else f"{updates}u")
    return f"{size}_{system}_{length}_seed{seed}"


def pretrain_lr(size: str, batch: int = 1) -> List[str]:
    """The pretraining lr override of a rung: the size's peak lr x sqrt(batch) (the larger batches
    of the throughput lever); none where that is tiny_birq.yaml's own, so those rungs keep their identity."""
    lr = PRETRAIN_LR.get(size, BASE_PRETRAIN_LR) * math.sqrt(batch)
    return [] if lr == BASE_PRETRAIN_LR else [f"optimization.lr=[{lr:.3g}]"]


def preset(size: str, updates: int, labelled: int = None, finetune_updates: int = FINETUNE_UPDATES,
           batch: int = 1) -> dict:
    regime = P.PRESETS["regime"]
    # a size's finetuning lr comes last, so it is the one value the merged command line keeps
    size_lr = [f"optimization.lr=[{FINETUNE_LR[size]}]"] if size in FINETUNE_LR else []
    by_system = {s: list(r) + size_lr for s, r in regime["finetune_overrides_by_system"].items()}
    return dict(corpus=LH.CORPUS_PRESET, pretrain_updates=max(updates, 1), finetune_updates=finetune_updates,
                max_tokens=BATCH_TOKENS, pretrain_max_tokens=batch * BATCH_TOKENS, log_interval=100,
                model=SIZES[size], labelled=labelled, decode_valid=True,
                finetune_overrides=list(regime["finetune_overrides"]) + size_lr,
                finetune_overrides_by_system=by_system)


def pipelines(out: Path, size: str, system: str, updates: int, seed: int, threads: int,
              finetune_updates: int = FINETUNE_UPDATES):
    """The rung's pretraining pipeline and one finetuning pipeline per labelled size; these
    share the pretraining stage's identity, so a re-pretrained rung is finetuned again."""
    pipe_system, overrides, batch = SYSTEMS[system]
    overrides = pretrain_lr(size, batch) + overrides
    root = out / rung_name(size, system, updates, seed)
    pre = P.Pipeline(root, preset(size, updates, batch=batch), LH.corpus_dir(), LH.CORPUS_PRESET, seed=seed, threads=threads,
                     overrides={pipe_system: overrides}, systems=(pipe_system,))
    fts = OrderedDict()
    for n in LABELLED:
        ft = P.Pipeline(root / f"ft{n}", preset(size, updates, n, finetune_updates), LH.corpus_dir(), LH.CORPUS_PRESET,
                        seed=seed, threads=threads, systems=(pipe_system,))
        ft.stage_identity = (lambda name, ft=ft: pre.stage_identity(name) if name.startswith("pretrain_")
                             else P.Pipeline.stage_identity(ft, name))
        fts[n] = ft
    return pre, fts, pipe_system


def run(out: Path, rung: tuple, threads: int, finetune_updates: int = FINETUNE_UPDATES,
        summaries: Path = SUMMARY_DIR) -> dict:
    if rung == ("fbank",):
        pipe = P.Pipeline(out / "fbank", preset("tiny", 0), LH.corpus_dir(), LH.CORPUS_PRESET, threads=threads)
        pipe.corpus()
        result = pipe.frozen("fbank", "fbank")
        return write_summary({"rung": "fbank", "system": "fbank", "frozen": P.frozen_rows(result)}, "fbank", summaries)
    size, system, updates, seed = rung
    pre, fts, pipe_system = pipelines(out, size, system, updates, seed, threads, finetune_updates)
    pre.corpus()
    ckpt = pre.pretrain(pipe_system)
    frozen = pre.frozen("final", ckpt)
    finetune = OrderedDict()
    for n, ft in fts.items():
        model = ft.finetune(pipe_system, ckpt)
        finetune[str(n)] = OrderedDict((t, ft.decode(pipe_system, model, t)) for t in ft.eval_sets)
    summary = summarise(pre, size, system, updates, seed, frozen, finetune)
    summary["finetune_updates"] = finetune_updates
    return write_summary(summary, rung_name(size, system, updates, seed), summaries)


def summarise(pre: P.Pipeline, size: str, system: str, updates: int, seed: int, frozen: dict, finetune: dict) -> dict:
    pipe_system = SYSTEMS[system][0]
    marker = pre.stages.load(f"pretrain_{pipe_system}") or {}
    summary = OrderedDict(rung=rung_name(size, system, updates, seed), size=size, system=system, updates=updates,
                          seed=seed, model=SIZES[size], overrides=SYSTEMS[system][1],
                          pretrain_max_tokens=pre.p["pretrain_max_tokens"],
                          pretrain_wall_seconds=marker.get("wall_seconds"),
                          pretrain_cpu_seconds=marker.get("cpu_seconds"))
    if system != "none":
        log = S.parse_fairseq_log(pre.out / "pretrain" / pipe_system / "train.log")["train"]
        # audio per update, measured: fairseq's audio_sec_per_sec over its updates per second
        per_update = [float(r["audio_sec_per_sec"]) / float(r["ups"]) for r in log
                      if float(r.get("ups", 0) or 0) > 0 and "audio_sec_per_sec" in r]
        summary["audio_seconds_per_update"] = round(sum(per_update) / len(per_update), 3) if per_update else None
        summary["audio_hours_seen"] = round(updates * summary["audio_seconds_per_update"] / 3600, 2) \
            if per_update else None
        last = log[-1] if log else {}
        summary["final_train"] = {k: last[k] for k in ("loss", "anchor_acc", "anchor_code_ppl", "enhanced_acc",
                                                       "enhanced_code_ppl") if k in last}
    else:
        summary["audio_hours_seen"] = 0.0
    summary["frozen"] = P.frozen_rows(frozen)
    summary["finetune"] = {n: {t: {"cer": round(r["cer"], 2), "wer": round(r["wer"], 2)} for t, r in res.items()}
                           for n, res in finetune.items()}
    return summary


def write_summary(summary: dict, name: str, directory: Path = SUMMARY_DIR) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"-- ladder rung {name} -> {path}", flush=True)
    return summary


# --------------------------------------------------------------------------- report
METRICS = [("PER", "frozen", "pr_linear"), ("CER", "frozen", "asr_linear"),
           ("CER ft100", "finetune", "100"), ("CER ft300", "finetune", "300")]
SPLITS = ("test_seen", "test_unseen")


def load_summaries(directory: Path = SUMMARY_DIR) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))]


def metric(row: dict, kind: str, key: str, split: str):
    block = (row.get(kind) or {}).get(key) or {}
    value = block.get(split)
    return value["cer"] if isinstance(value, dict) else value


def mean_std(values: List[float], digits: int = 1) -> str:
    """"m ± s" over seeds (sample std), "m" for one seed, "–" for none."""
    if not values:
        return "–"
    mean, std = R.mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def groups(rows: List[dict]) -> "OrderedDict[tuple, List[dict]]":
    order = {s: i for i, s in enumerate(list(SIZES) + ["fbank"])}
    keyed = OrderedDict()
    for r in sorted(rows, key=lambda r: (order.get(r.get("size", "fbank"), 9), r.get("updates", 0),
                                         list(SYSTEMS).index(r["system"]) if r["system"] in SYSTEMS else 9)):
        keyed.setdefault((r.get("size", "–"), r["system"], r.get("updates", 0)), []).append(r)
    return keyed


def report(directory: Path = SUMMARY_DIR, write: bool = True) -> str:
    """The ladder table (mean ± std over seeds, %, test sets seen / unseen); with ``write`` also
    ``ladder.md`` and the plot ``ladder.png`` beside the summaries."""
    rows = load_summaries(directory)
    if not rows:
        return "_No ladder rungs committed._\n"
    cols = [f"{m} {s}" for m, _, _ in METRICS for s in ("seen", "unseen")]
    lines = ["| size | system | updates | audio h seen | seeds | valid PER | " + " | ".join(cols) + " |",
             "| --- | --- | ---: | ---: | --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    for (size, system, updates), rs in groups(rows).items():
        hours = [r["audio_hours_seen"] for r in rs if r.get("audio_hours_seen") is not None]
        cells = [mean_std([v for r in rs if (v := metric(r, kind, key, split)) is not None])
                 for _, kind, key in METRICS for split in SPLITS]
        valid = mean_std([v for r in rs if (v := metric(r, "frozen", "pr_linear", "valid")) is not None])
        lines.append(f"| {size} | {system} | {updates} | {(sum(hours) / len(hours)) if hours else 0:.1f} | "
                     f"{', '.join(str(r.get('seed', '–')) for r in rs)} | {valid} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if write:
        (Path(directory) / "ladder.md").write_text(text)
        plot(rows, Path(directory) / "ladder.png")
    return text


# The targets (3 seeds; test sets for the table, valid for choices), as per-seed ratios:
# (ratio's name, numerator system, denominator system, metric of METRICS, target or None). "none"
# as the denominator is the same seed's random initialisation (no pretraining, for finetuning).
TARGETS = [
    ("BEST-RQ / random init", "bestrq", "none", "PER", 0.8),
    ("BiRQ / random init", "birq", "none", "PER", None),
    ("stop-gradient BiRQ / random init", "stopgrad", "none", "PER", None),
    ("BiRQ / BEST-RQ", "birq", "bestrq", "PER", 0.95),
    ("stop-gradient BiRQ / BEST-RQ", "stopgrad", "bestrq", "PER", None),
    ("stop-gradient BiRQ / BiRQ", "stopgrad", "birq", "PER", None),
    ("BEST-RQ / no pretraining", "bestrq", "none", "CER ft100", 0.9),
    ("BEST-RQ / no pretraining", "bestrq", "none", "CER ft300", 0.9),
    ("BiRQ / BEST-RQ", "birq", "bestrq", "CER ft300", None),
    ("stop-gradient BiRQ / BEST-RQ", "stopgrad", "bestrq", "CER ft300", None),
]
# The rungs the 3-seed comparison is read at: 10 k, and 30 k, where the systems separate most on
# valid (BiRQ / BEST-RQ frozen PER 0.975 against 1.009 at 10 k); 30 k is the chosen rung.
TARGET_RUNGS = (("medium", 10000), ("medium", 30000))
MIN_SEEDS = 3


def targets_report(directory: Path = SUMMARY_DIR, rungs=TARGET_RUNGS) -> str:
    """The issue's targets at the given (size, updates) rungs: each ratio per seed (the numerator
    over the same seed's denominator; ``none`` is the seed's random init), then mean ± std over the
    seeds that have both, on valid and both test sets. A target is met when the mean on both test
    sets is at or under it; with fewer than ``MIN_SEEDS`` paired seeds there is no verdict."""
    rows = load_summaries(directory)
    kinds = {name: (kind, key) for name, kind, key in METRICS}
    lines = ["| rung | ratio | metric | seeds | valid | test seen | test unseen | target | on the test sets |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for size, updates in rungs:
        def by_seed(system):
            steps = 0 if system == "none" else updates
            return {r["seed"]: r for r in rows
                    if r.get("size") == size and r["system"] == system and r.get("updates", 0) == steps}

        for label, num, den, name, target in TARGETS:
            kind, key = kinds[name]
            nums, dens = by_seed(num), by_seed(den)
            seeds = sorted(set(nums) & set(dens))
            if not seeds:
                continue
            cells, means = [], {}
            for split in ("valid",) + SPLITS:
                ratios = [a / b for sd in seeds if (a := metric(nums[sd], kind, key, split)) is not None
                          and (b := metric(dens[sd], kind, key, split))]
                cells.append(mean_std(ratios, digits=3))
                if ratios:
                    means[split] = sum(ratios) / len(ratios)
            if target is None:
                verdict = "–"
            elif len(seeds) < MIN_SEEDS:
                verdict = f"no verdict ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
            else:
                verdict = "met" if all(means.get(sp, math.inf) <= target for sp in SPLITS) else "missed"
            lines.append(f"| {size} {updates // 1000} k | {label} | {name} | {', '.join(map(str, seeds))} | "
                         + " | ".join(cells) + f" | {'≤ ' + format(target, 'g') if target else '–'} | {verdict} |")
    if len(lines) == 2:
        return "_No rung has both sides of a ratio committed._\n"
    return "\n".join(lines) + "\n"


def reference_report(reference_dir: Path = REFERENCE_DIR, directory: Path = SUMMARY_DIR, size: str = "medium",
                     systems=("none", "bestrq", "bestrq8192")) -> str:
    """SpeechBrain's BEST-RQ (examples/reference) beside our BEST-RQ rungs of the same size: frozen
    PER / CER (%, test sets seen / unseen) and PER over each encoder's own random initialisation
    (the architectures differ, so the untrained encoders differ too), per seed, then mean ± std."""
    refs = [dict(r, system="bestrq", frozen=P.frozen_rows(r["superb"])) for r in load_summaries(reference_dir)]
    if not refs:
        return "_No reference runs committed._\n"
    ours = [r for r in load_summaries(directory) if r.get("size") == size and r["system"] in systems]
    lines = ["| encoder | system | updates | audio h seen | seeds | PER seen | PER unseen | CER seen | CER unseen "
             "| PER / own init, seen | PER / own init, unseen |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, rows in (("SpeechBrain Conformer (reference)", refs), (f"ours, {size}", ours)):
        keyed = OrderedDict()
        for r in sorted(rows, key=lambda r: (r.get("updates", 0), r["system"])):
            keyed.setdefault((r["system"], r.get("updates", 0)), []).append(r)
        inits = {r["seed"]: r for r in rows if r.get("updates", 0) == 0}
        for (system, updates), rs in keyed.items():
            hours = [r.get("audio_hours_seen") or 0.0 for r in rs]
            cells = [mean_std([v for r in rs if (v := metric(r, "frozen", key, split)) is not None])
                     for key in ("pr_linear", "asr_linear") for split in SPLITS]
            ratios = ["–" if updates == 0 else mean_std(
                [metric(r, "frozen", "pr_linear", split) / metric(inits[r["seed"]], "frozen", "pr_linear", split)
                 for r in rs if r["seed"] in inits], digits=3) for split in SPLITS]
            name = "random init" if updates == 0 else system
            lines.append(f"| {label} | {name} | {updates} | {sum(hours) / len(hours):.1f} | "
                         f"{', '.join(str(r['seed']) for r in rs)} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5), squeeze=False)
    colours = {"bestrq": "C0", "birq": "C1", "stopgrad": "C2", "bestrq8192": "C3", "bestrq_b4": "C4",
               "bestrq_b8": "C5"}
    styles = {"tiny": ":", "medium": "-", "large": "--"}
    for row, split in enumerate(SPLITS):
        for ax, (name, kind, key) in zip(axes[row], METRICS):
            for size in SIZES:
                init = [v for r in rows if r.get("size") == size and r["system"] == "none"
                        and (v := metric(r, kind, key, split)) is not None]
                for system, colour in colours.items():
                    # each curve starts at its size's random initialisation (0 h seen)
                    pts = OrderedDict([(0.0, init)] if init else [])
                    for r in rows:
                        if r.get("size") == size and r["system"] == system:
                            v = metric(r, kind, key, split)
                            if v is not None:
                                pts.setdefault(r["audio_hours_seen"], []).append(v)
                    if len(pts) > bool(init):
                        xs = sorted(pts)
                        stats = [R.mean_std(pts[x]) for x in xs]
                        ax.errorbar(xs, [m for m, _ in stats], yerr=[sd for _, sd in stats], color=colour,
                                    ls=styles[size], marker="o", ms=3, capsize=2, label=f"{system} {size}")
                if init:
                    ax.axhline(sum(init) / len(init), color="grey", ls=styles[size], lw=0.8,
                               label=f"random init {size}")
            fb = [v for r in rows if r["system"] == "fbank" and (v := metric(r, kind, key, split)) is not None]
            if fb:
                ax.axhline(fb[0], color="black", lw=0.8, label="fbank")
            ax.set_xlim(left=-0.5)
            ax.set(title=f"{name} (%) on {split}", xlabel="audio hours seen in pretraining")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("The ladder: mean ± std over seeds (lower is better)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="SIZE:SYSTEM:UPDATES:SEED rungs or fbank, in order")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--finetune-updates", type=int, default=FINETUNE_UPDATES,
                   help=f"CTC finetuning updates per labelled size (default {FINETUNE_UPDATES}; less only to try it out)")
    p.add_argument("--out", default=str(S.REPO / "results_runs" / "ladder"))
    p.add_argument("--summaries", default=str(SUMMARY_DIR), help="where finished rungs write their JSON")
    p.add_argument("--list", action="store_true", help="the sizes and systems")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for name, model in SIZES.items():
            print(f"size {name}: {' '.join(f'{k}={v}' for k, v in model.items())}")
        for name, (pipe_system, over, batch) in SYSTEMS.items():
            lr = f"the size's lr x sqrt({batch})" if batch > 1 else "the size's lr"
            print(f"system {name}: {' '.join([pipe_system] + over)}; {batch} x {BATCH_TOKENS / 16000:g} s per update, {lr}")
        print(f"peak pretraining lr per size: {BASE_PRETRAIN_LR} unless {PRETRAIN_LR}")
        return 0
    try:
        rungs = [parse_rung(r) for r in args.runs]
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out).resolve()
    for rung in rungs:
        run(out, rung, args.threads, args.finetune_updates, Path(args.summaries))
    if args.report or rungs:
        print(report(Path(args.summaries)))
        print(targets_report(Path(args.summaries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
