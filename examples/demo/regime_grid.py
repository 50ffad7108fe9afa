#!/usr/bin/env python
"""Search for a regime where pretraining pays off on this CPU (issue: "a regime where
pretraining matters"): a small, resumable grid over model size, unlabelled pool,
pretraining updates and batch, labelled-subset size and finetuning recipe.

    .venv/bin/python examples/demo/regime_grid.py --list
    .venv/bin/python examples/demo/regime_grid.py --runs ft_s_none_l100_r1 ft_s_bestrq3k_l100_r1 ...
    .venv/bin/python examples/demo/regime_grid.py --report           # examples/demo/regime/grid.md

Every run is named; a run's name fixes all of its settings (RUNS below). Pretraining runs
are shared by the finetuning runs built on them. Each finished stage leaves a marker
(resumable, as the demo's); the summary of every finished finetuning run (valid and test
CER/WER, settings, timings) is written to examples/demo/regime/<run>.json, which is
committed, so the grid table can be regenerated without the checkpoints. Choices are made
on the valid split only; test numbers are shown for the final table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as P  # noqa: E402
import stages as S  # noqa: E402

SUMMARY_DIR = S.REPO / "examples" / "demo" / "regime"
EVAL_SETS = ("valid",) + P.TEST_SETS

# Encoder shapes and finetuning recipes are the demo's (examples/demo/pipeline.py).
ARCHS = {"s": P.MODEL_SMALL, "m": P.MODEL_MEDIUM}
RECIPES = P.RECIPES


def pretrain_spec(arch: str, system: str, updates: int, max_tokens: int, pool: str = "train",
                  extra: List[str] = ()) -> dict:
    return dict(arch=arch, system=system, updates=updates, max_tokens=max_tokens, pool=pool, extra=list(extra))


# name -> pretraining settings
PRETRAIN = OrderedDict([
    ("s_none", pretrain_spec("s", "none", 1, 128000)),
    ("s_bestrq3k", pretrain_spec("s", "bestrq", 3000, 128000)),
    ("m_none", pretrain_spec("m", "none", 1, 320000)),
    ("m_bestrq3k", pretrain_spec("m", "bestrq", 3000, 320000)),
    # can the model predict masked anchor labels beyond their marginal at all? (1500 updates)
    ("s_bestrq_lr3e3", pretrain_spec("s", "bestrq", 1500, 128000, extra=["optimization.lr=[0.003]"])),
    ("s_bestrq_span2", pretrain_spec("s", "bestrq", 1500, 128000, extra=["model.mask_length=2"])),
    ("s_bestrq_cb16", pretrain_spec("s", "bestrq", 1500, 128000, extra=["model.anchor_codebook_size=16"])),
    ("s_bestrq_ref1500", pretrain_spec("s", "bestrq", 1500, 128000)),
])


def finetune_spec(pretrain: str, labelled: int, recipe: str, updates: int, max_tokens: int = 128000) -> dict:
    return dict(pretrain=pretrain, labelled=labelled, recipe=recipe, updates=updates, max_tokens=max_tokens)


def _grid() -> "OrderedDict[str, dict]":
    runs = OrderedDict()
    for pre in PRETRAIN:
        for labelled in (100, 300, 1000):
            for recipe in RECIPES:
                runs[f"ft_{pre}_l{labelled}_{recipe}"] = finetune_spec(pre, labelled, recipe, 2000)
    return runs


RUNS = _grid()


# --------------------------------------------------------------------------- stages
class Grid:
    """The grid's runs on the demo's stages: ``pipeline``'s override builders, run by
    ``stages.train_stage`` / ``stages.decode_stage``."""

    def __init__(self, out: Path, corpus: Path, seed: int, threads: int):
        self.out, self.corpus, self.seed = out, corpus, seed
        self.env = S.thread_env(threads)
        self.clock = S.Clock()
        self.stages = S.Stages(out / "stages")

    def pretrain(self, name: str) -> Path:
        spec = PRETRAIN[name]
        save_dir = self.out / "pretrain" / f"{name}_seed{self.seed}"
        updates = spec["updates"]
        ov = P.pretrain_overrides(self.corpus, save_dir, self.seed, spec["system"], updates, spec["max_tokens"],
                                  log_interval=25, model=ARCHS[spec["arch"]], extra=spec["extra"],
                                  train_subset=spec["pool"])
        stage = f"pretrain_{name}_seed{self.seed}"
        return S.train_stage(self.stages, stage, S.signature(ov), "pretrain", "tiny_birq", ov, save_dir,
                             1 if spec["system"] == "none" else updates, self.env, self.clock, stage)

    def finetune(self, run: str) -> dict:
        spec = RUNS[run]
        pre_ckpt = self.pretrain(spec["pretrain"])
        subset = P.labelled_subset(self.corpus, spec["labelled"])
        save_dir = self.out / "finetune" / f"{run}_seed{self.seed}"
        ov = P.finetune_overrides(self.corpus, pre_ckpt, save_dir, self.seed, subset, spec["updates"],
                                  spec["max_tokens"], log_interval=50, recipe=RECIPES[spec["recipe"]])
        pre_stage = f"pretrain_{spec['pretrain']}_seed{self.seed}"
        stage = f"finetune_{run}_seed{self.seed}"
        ckpt = S.train_stage(self.stages, stage, S.signature([ov, S.stage_identity(self.stages, pre_stage)]),
                             "finetune", "tiny_ctc", ov, save_dir, spec["updates"], self.env, self.clock, stage)
        results = OrderedDict(
            (s, S.decode_stage(self.stages, f"decode_{run}_seed{self.seed}_{s}", S.stage_identity(self.stages, stage),
                               self.corpus, ckpt, s, self.out / "decode" / f"{run}_seed{self.seed}", self.env,
                               self.clock, f"decode {run} on {s}", run))
            for s in EVAL_SETS)
        summary = OrderedDict(run=run, seed=self.seed, spec=spec, pretrain=PRETRAIN[spec["pretrain"]],
                              arch=ARCHS[PRETRAIN[spec["pretrain"]]["arch"]],
                              recipe=P.fill_recipe(RECIPES[spec["recipe"]], spec["updates"]), results=results,
                              timings={k: v for k, v in self.stages.timings().items() if k in (pre_stage, stage)},
                              date=time.strftime("%Y-%m-%d %H:%M:%S"))
        SUMMARY_DIR.mkdir(parents=True, exist_ok=True)
        (SUMMARY_DIR / f"{run}_seed{self.seed}.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


# --------------------------------------------------------------------------- report
def load_summaries() -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted(SUMMARY_DIR.glob("ft_*.json"))]


def anchor_marginal_bits(checkpoint: Path, manifest: Path, utterances: int = 100) -> float:
    """Entropy (bits) of the anchor labels' marginal over a manifest's first utterances: the
    cross-entropy of a predictor that ignores the audio. A masked-prediction loss at or above
    it means the model learned nothing about the context."""
    import soundfile as sf
    import torch

    from birq_fairseq.probe import frame_codes, load_pretrained_birq

    model, _ = load_pretrained_birq(str(checkpoint))
    lines = manifest.read_text().splitlines()
    labels = []
    with torch.no_grad():
        for line in lines[1: utterances + 1]:
            wav, _ = sf.read(Path(lines[0]) / line.split("\t")[0], dtype="float32")
            codes, _ = frame_codes(model, torch.from_numpy(wav)[None], None)
            labels.append(codes["anchor"].flatten())
    counts = torch.bincount(torch.cat(labels)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum()), float(p.max())


def weight_shift(out: Path, pretrain: str, finetune_run: str, seed: int) -> Dict[str, float]:
    """Mean |change| of the encoder's weights: pretraining (init -> pretrained) against
    finetuning (pretrained -> finetuned). The init is the 'none' run of the same arch and seed
    (the same seeded initialisation); wav2vec_ctc keeps the encoder under w2v_encoder.w2v_model."""
    import torch

    arch = PRETRAIN[pretrain]["arch"]
    load = lambda p: torch.load(p, map_location="cpu", weights_only=False)["model"]  # noqa: E731
    init = load(out / "pretrain" / f"{arch}_none_seed{seed}" / "checkpoint_last.pt")
    pre = load(out / "pretrain" / f"{pretrain}_seed{seed}" / "checkpoint_last.pt")
    fin = load(out / "finetune" / f"{finetune_run}_seed{seed}" / "checkpoint_last.pt")
    keys = [k for k in pre if k.startswith("encoder.layers.") and pre[k].dtype.is_floating_point
            and f"w2v_encoder.w2v_model.{k}" in fin]
    mean = lambda a, b: float(sum((a[k] - b[k]).abs().mean() for k in keys) / len(keys))  # noqa: E731
    fin = {k: fin[f"w2v_encoder.w2v_model.{k}"] for k in keys}
    return {"pretraining": round(mean(pre, init), 4), "finetuning": round(mean(fin, pre), 4),
            "finetune_run": finetune_run, "tensors": len(keys)}


def pretrain_summary(out: Path, corpus: Path, name: str, seed: int) -> dict:
    """Valid anchor loss/accuracy at the end of a pretraining run against the labels' marginal
    entropy; cached as pretrain_<name>_seed<N>.json next to the finetuning summaries."""
    cached = SUMMARY_DIR / f"pretrain_{name}_seed{seed}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    save_dir = out / "pretrain" / f"{name}_seed{seed}"
    log = save_dir / "train.log"
    marker = S.Stages(out / "stages").load(f"pretrain_{name}_seed{seed}") or {}
    if PRETRAIN[name]["system"] == "none" or marker.get("status") != "done":
        return {}  # not run, or not finished
    valid = S.parse_fairseq_log(log)["valid"]
    bits, majority = anchor_marginal_bits(save_dir / "checkpoint_last.pt", corpus / "valid.tsv")
    summary = OrderedDict(name=name, seed=seed, spec=PRETRAIN[name],
                          valid=[{k: r.get(k) for k in ("num_updates", "anchor_loss", "anchor_acc")} for r in valid],
                          anchor_marginal_bits=round(bits, 3), anchor_majority_share=round(majority, 3))
    ft_run = f"ft_{name}_l100_r1"
    if (out / "finetune" / f"{ft_run}_seed{seed}" / "checkpoint_last.pt").exists():
        summary["weight_shift"] = weight_shift(out, name, ft_run, seed)
    cached.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def report(path: Path) -> str:
    rows = load_summaries()
    by_key: Dict[tuple, dict] = {}
    for r in rows:
        by_key[(r["run"], r["seed"])] = r
    lines = ["| run | arch | pretraining | labelled | recipe | ft updates | seed | valid CER | seen CER | unseen CER "
             "| seen WER | unseen WER |", "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for (run, seed), r in sorted(by_key.items()):
        pre, spec, res = r["pretrain"], r["spec"], r["results"]
        pre_txt = "none" if pre["system"] == "none" else (
            f"{pre['system']} {pre['updates']} x {pre['max_tokens'] / 16000:.0f} s "
            + " ".join(o.replace("model.", "").replace("optimization.", "") for o in pre["extra"])).strip()
        lines.append(f"| {run} | {pre['arch']} | {pre_txt} | {spec['labelled']} | {spec['recipe']} | "
                     f"{spec['updates']} | {seed} | {res['valid']['cer']:.1f} | {res['test_seen']['cer']:.1f} | "
                     f"{res['test_unseen']['cer']:.1f} | {res['test_seen']['wer']:.1f} | "
                     f"{res['test_unseen']['wer']:.1f} |")
    pretrain = [json.loads(p.read_text()) for p in sorted(SUMMARY_DIR.glob("pretrain_*.json"))]
    if pretrain:
        lines += ["", "Pretraining: masked anchor-label cross-entropy on valid (bits) against the entropy of the "
                  "labels' marginal (the loss of a predictor that ignores the audio):", "",
                  "| pretraining | seed | updates | valid anchor loss | marginal entropy | bits below marginal | "
                  "valid anchor acc | most frequent label's share | mean abs weight change: pretraining / "
                  "finetuning (l100 r1) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in pretrain:
            last = r["valid"][-1]
            shift = r.get("weight_shift")
            shift_txt = f"{shift['pretraining']:.4f} / {shift['finetuning']:.4f}" if shift else "–"
            lines.append(f"| {r['name']} | {r['seed']} | {last['num_updates']} | {last['anchor_loss']:.3f} | "
                         f"{r['anchor_marginal_bits']:.3f} | {r['anchor_marginal_bits'] - last['anchor_loss']:.3f} | "
                         f"{last['anchor_acc']:.3f} | {r.get('anchor_majority_share', float('nan')):.3f} | "
                         f"{shift_txt} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> int:
    global SUMMARY_DIR
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="finetuning runs to (re)run or resume")
    p.add_argument("--pretrain", nargs="*", default=[], help="pretraining runs only")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus-dir", default=str(S.REPO / "data" / "tts_large"))
    p.add_argument("--out", default=str(S.REPO / "results_runs" / "regime"))
    p.add_argument("--summary-dir", default=str(SUMMARY_DIR), help="where run summaries (committed) go")
    p.add_argument("--list", action="store_true")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    SUMMARY_DIR = Path(args.summary_dir)
    if args.list:
        for name, spec in PRETRAIN.items():
            print(f"pretrain {name}: {json.dumps(spec)}")
        for name, spec in RUNS.items():
            print(f"run {name}: {json.dumps(spec)}")
        return 0
    unknown = [r for r in args.runs if r not in RUNS] + [r for r in args.pretrain if r not in PRETRAIN]
    if unknown:
        p.error(f"unknown runs: {unknown} (see --list)")
    grid = Grid(Path(args.out).resolve(), Path(args.corpus_dir).resolve(), args.seed, args.threads)
    for name in args.pretrain:
        grid.pretrain(name)
    for run in args.runs:
        grid.finetune(run)
    if args.report:
        for name in PRETRAIN:
            pretrain_summary(Path(args.out).resolve(), Path(args.corpus_dir).resolve(), name, args.seed)
    if args.report or args.runs:
        print(report(SUMMARY_DIR / "grid.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
