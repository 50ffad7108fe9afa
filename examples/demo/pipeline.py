"""Presets and the demo's pipeline: corpus -> pretraining -> CTC finetuning -> decoding -> probe.

The override builders (:func:`pretrain_overrides`, :func:`finetune_overrides`) are the one
place a pretraining or finetuning run's fairseq settings are made: ``Pipeline`` (the demo,
``make results``), ``regime_grid.py`` and ``label_health.py`` all call them, and run them
with ``stages.train_stage`` / ``stages.decode_stage``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from stages import (BIN, PLUGIN, REPO, Clock, Stages, banner, child_cpu_seconds, decode_stage, parse_fairseq_log,
                    run_command, run_stage, signature, stage_identity, thread_env, train_stage)

SYSTEMS = ("none", "bestrq", "birq")  # the pretraining systems compared, in order
# table rows: the systems, then (when a preset asks for it) the supervised topline: the
# untrained init finetuned on every labelled utterance of the corpus's finetune split
TABLE_ROWS = SYSTEMS + ("topline",)
SYSTEM_LABELS = {"none": "no pretraining", "bestrq": "BEST-RQ", "birq": "BiRQ",
                 "topline": "supervised topline (all labelled data, no pretraining)"}
TEST_SETS = ("test_seen", "test_unseen")

# --------------------------------------------------------------------------- presets
# Sizes chosen by measurement on the project's 2-core CPU machine (see RESULTS.md and the
# report in examples/demo/README.md). Pretraining uses the same model and budget for
# BiRQ and BEST-RQ; BiRQ's extra cost is its label-generator pass (k of L layers).
MODEL_SMALL = {
    "model.encoder_layers": 4,
    "model.encoder_embed_dim": 96,
    "model.encoder_ffn_embed_dim": 192,
    "model.encoder_attention_heads": 4,
}

# CTC needs many updates to stop emitting only blanks; with a few hundred updates a
# higher peak lr (tri-stage schedule of tiny_ctc.yaml) and gradient clipping help.
FT_FAST = ["optimization.lr=[0.002]", "optimization.clip_norm=10.0"]
# After FT_FAST (whose lr it overrides): train the conv subsampling, light channel masking, lr 1e-3.
FT_TRAINED_SUBSAMPLING = ["optimization.lr=[0.001]", "model.feature_grad_mult=1.0", "model.mask_channel_prob=0.05"]
# For pretrained encoders: the above with the encoder frozen for the first 30 % of the updates
# (only the CTC projection trains), as wav2vec 2.0's low-resource recipes keep pretrained features.
FT_FROZEN_FIRST = FT_TRAINED_SUBSAMPLING + ["model.freeze_finetune_updates={UPDATES_30PCT}"]
# The finetuning recipes of the regime grid (examples/demo/regime/grid.md), by name.
RECIPES = {"r1": FT_FAST, "r2": FT_FAST + FT_TRAINED_SUBSAMPLING, "r3": FT_FAST + FT_FROZEN_FIRST}
# A wider encoder for the grid's model-size axis (tiny_birq.yaml otherwise).
MODEL_MEDIUM = {
    "model.encoder_layers": 6,
    "model.encoder_embed_dim": 192,
    "model.encoder_ffn_embed_dim": 768,
    "model.encoder_attention_heads": 4,
    "model.conv_channels": 32,
    "model.conv_pos": 32,
}

PRESETS: Dict[str, Dict] = {
    # for tests only: seconds, not a meaningful result
    "tiny": dict(corpus="tiny", pretrain_updates=5, finetune_updates=5, max_tokens=64000,
                 log_interval=1, model=MODEL_SMALL, frozen=True),
    "quick": dict(corpus="quick", pretrain_updates=150, finetune_updates=300, max_tokens=128000,
                  log_interval=10, model=MODEL_SMALL, finetune_overrides=FT_FAST, frozen=True),
    # make demo; frozen: the frozen evaluation's PER / CER table of each starting point too
    "default": dict(corpus="default", pretrain_updates=800, finetune_updates=1000, max_tokens=128000,
                    log_interval=10, model=MODEL_SMALL, finetune_overrides=FT_FAST, frozen=True),
    "large": dict(corpus="large", pretrain_updates=3000, finetune_updates=1500, max_tokens=192000,
                  log_interval=25, model=MODEL_SMALL, finetune_overrides=FT_FAST),
    # The comparison of RESULTS.md (make results), chosen on valid from the grid of
    # examples/demo/regime_grid.py (examples/demo/regime/grid.md): 6 h of unlabelled speech,
    # 100 labelled utterances (4.5 min), the supervised topline on all 1000 labelled
    # utterances, the label-quality probe over pretraining, valid decoded too.
    # Finetuning recipes chosen on valid CER (grid, seed 1): no pretraining fares best with
    # FT_FAST (r1: 62.9, against 63.3 with the encoder frozen first and 65.0 without), BEST-RQ
    # with FT_FROZEN_FIRST (r3: 61.8, against 62.8 with FT_FAST); BiRQ, not in the grid,
    # takes BEST-RQ's.
    "regime": dict(corpus="large", labelled=100, pretrain_updates=3000, finetune_updates=2000, max_tokens=128000,
                   log_interval=25, model=MODEL_SMALL, finetune_overrides=FT_FAST,
                   finetune_overrides_by_system={"bestrq": FT_FROZEN_FIRST, "birq": FT_FROZEN_FIRST},
                   topline=True, topline_updates=4000, decode_valid=True, probe=True),
}


# --------------------------------------------------------------------------- the pipeline
def corpus_counts(preset: str) -> Dict[str, int]:
    """The builder's own preset counts (without importing fairseq)."""
    sys.path.insert(0, str(REPO / "manifests"))
    import _bootstrap  # noqa: F401

    _bootstrap.bare_package()
    from tts_corpus import resolve_counts

    counts = dict(resolve_counts(preset))
    counts.pop("max_words", None)
    return counts


def corpus_complete(corpus_dir: Path, preset: str, seed: int) -> bool:
    meta = Path(corpus_dir) / "corpus.json"
    if not meta.exists():
        return False
    try:
        stats = json.loads(meta.read_text())
    except ValueError:
        return False
    needed = ["train.tsv", "finetune.tsv", "finetune.ltr", "valid.tsv", "valid.ltr", "dict.ltr.txt"] + [
        f"{t}.{e}" for t in TEST_SETS for e in ("tsv", "ltr")]
    return (stats.get("seed") == seed and stats.get("counts") == corpus_counts(preset)
            and all((Path(corpus_dir) / n).exists() for n in needed))


def labelled_subset(corpus: Path, n: int) -> str:
    """``finetune<n>``: the first n utterances of the corpus's labelled ``finetune`` split.

    The corpus builder draws voices and sentences at random for every utterance, so a
    prefix is a random subset (and the subsets are nested: finetune100 in finetune300).
    Returns the subset's name for ``dataset.train_subset``.
    """
    corpus = Path(corpus)
    name = f"finetune{n}"
    src = corpus / "finetune.tsv"
    lines = src.read_text().splitlines()
    if not 0 < n <= len(lines) - 1:
        raise ValueError(f"{src}: has {len(lines) - 1} utterances; a labelled subset of {n} was asked for")
    wanted = {f"{name}.tsv": lines[: n + 1]}
    for ext in ("ltr", "wrd"):
        wanted[f"{name}.{ext}"] = (corpus / f"finetune.{ext}").read_text().splitlines()[:n]
    for filename, content in wanted.items():
        text = "\n".join(content) + "\n"
        path = corpus / filename
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
    return name


# --------------------------------------------------------------------------- override builders
def pretrain_overrides(corpus_dir: Path, save_dir: Path, seed: int, system: str, updates: int, max_tokens: int,
                       log_interval: int, model: Dict[str, object], extra: Sequence[str] = (),
                       keep_checkpoints: bool = False, save_interval: Optional[int] = None,
                       train_subset: Optional[str] = None) -> List[str]:
    """fairseq-hydra-train overrides of examples/pretrain/tiny_birq.yaml for one pretraining run.

    ``system``: "birq" (``extra`` = BiRQ-only overrides, e.g. an ablation), "bestrq" (the same
    model with the enhanced stream off) or "none": the untrained starting point, the BiRQ
    architecture and seed written by a single update at learning rate 0 (Adam's step and
    weight decay both scale with the lr, so the weights are exactly the seeded initialisation).
    """
    ov = [
        f"common.user_dir={PLUGIN}", f"task.data={corpus_dir}",
        f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir}/hydra",
        "common.log_format=json", f"common.log_file={save_dir}/train.log",
        f"common.log_interval={log_interval}", f"common.seed={seed}",
        f"optimization.max_update={updates}", f"dataset.max_tokens={max_tokens}",
        f"dataset.validate_interval_updates={max(updates // 2, 1)}",
        f"checkpoint.save_interval_updates={save_interval or max(updates // 4, 5)}",
        f"lr_scheduler.warmup_updates={max(updates // 10, 1)}",
    ] + (["checkpoint.keep_interval_updates=-1"] if keep_checkpoints else []) + [
        "common.cpu=true", "dataset.num_workers=0",
    ] + [f"{k}={v}" for k, v in model.items()]
    if train_subset and train_subset != "train":
        ov.append(f"dataset.train_subset={train_subset}")
    if system == "birq":
        ov += ["model.enhanced_stream=true"] + list(extra)
    elif system == "bestrq":
        ov += ["model.enhanced_stream=false"] + list(extra)
    elif system == "none":
        ov = [o for o in ov if not o.startswith(("optimization.max_update=", "dataset.validate_interval"))]
        ov += ["model.enhanced_stream=true", "optimization.max_update=1", "optimization.lr=[0.0]",
               "dataset.disable_validation=true"]
    else:
        raise ValueError(f"unknown pretraining system {system!r}: birq, bestrq or none")
    return ov


def finetune_overrides(corpus_dir: Path, w2v: Path, save_dir: Path, seed: int, subset: str, updates: int,
                       max_tokens: int, log_interval: int, recipe: Sequence[str] = ()) -> List[str]:
    """fairseq-hydra-train overrides of examples/finetune/tiny_ctc.yaml (stock wav2vec_ctc + ctc)
    finetuning ``w2v`` on the labelled ``subset``; ``recipe`` (e.g. RECIPES["r3"]) comes last, with
    ``{UPDATES_30PCT}`` filled in."""
    return [
        f"common.user_dir={PLUGIN}", f"task.data={corpus_dir}", f"model.w2v_path={w2v}",
        f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir}/hydra",
        "common.log_format=json", f"common.log_file={save_dir}/train.log",
        f"common.log_interval={log_interval}", f"common.seed={seed}",
        f"dataset.train_subset={subset}", "dataset.valid_subset=valid",
        f"optimization.max_update={updates}", f"dataset.max_tokens={max_tokens}",
        f"dataset.validate_interval_updates={updates}",
        f"checkpoint.save_interval_updates={max(updates // 4, 5)}",
        "common.cpu=true", "dataset.num_workers=0",
    ] + merge_overrides(fill_recipe(recipe, updates))


def merge_overrides(overrides: Sequence[str]) -> List[str]:
    """Hydra overrides with one value per key, the last one given (as Hydra would apply them), so a
    recipe built from parts (FT_FAST + FT_FROZEN_FIRST, each setting the lr) runs one command line
    that says what it does."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0]] == i]


def fill_recipe(recipe: Sequence[str], updates: int) -> List[str]:
    """A finetuning recipe's overrides for a run of ``updates`` updates (``{UPDATES_30PCT}`` filled in)."""
    return [o.replace("{UPDATES_30PCT}", str(int(0.3 * updates))) for o in recipe]


# The frozen evaluation (SUPERB-style, `birq-fairseq superb`): phonemes (PER) and characters
# (CER), linear CTC heads over a learned weighted sum of all layers, trained on the corpus's
# labelled `finetune` split, the epoch chosen on valid, scored on both test sets.
FROZEN_ARGS = ["--train", "finetune", "--valid", "valid", "--test", *TEST_SETS,
               "--task", "pr", "asr", "--downstream", "linear"]
# the splits the frozen evaluation reads phoneme labels (.phn) of
PHONEME_SPLITS = ("finetune", "valid") + TEST_SETS


def frozen_rows(result: dict) -> dict:
    """{"pr_linear": {"valid": PER, "test_seen": PER, ..., "layer_weights": [...]}, "asr_linear":
    {... CER}} of a ``birq-fairseq superb`` JSON."""
    rows = {}
    for r in result.get("runs", []):
        metric = "per" if r["task"] == "pr" else "cer"
        rows[f"{r['task']}_{r['downstream']}"] = dict(
            valid=round(r["valid"][metric], 2), **{split: round(v[metric], 2) for split, v in r["test"].items()},
            layer_weights=[round(w, 3) for w in r["layer_weights"]])
    return rows


class Pipeline:
    """Corpus -> pretrain BiRQ / BEST-RQ / an untrained init -> CTC finetune x3 -> decode x6."""

    def __init__(self, out: Path, preset: dict, corpus_dir: Path, corpus_preset: str, corpus_seed: int = 1,
                 seed: int = 1, clock: Optional[Clock] = None, threads: Optional[int] = None,
                 overrides: Optional[Dict[str, Sequence[str]]] = None, systems: Sequence[str] = SYSTEMS,
                 aligner: Optional[Path] = None):
        self.out = Path(out).resolve()
        self.p = preset
        self.corpus_dir = Path(corpus_dir).resolve()
        self.corpus_preset = corpus_preset
        self.corpus_seed = corpus_seed
        self.seed = seed
        self.clock = clock or Clock()
        self.env = thread_env(threads)
        self.stages = Stages(self.out / "stages")
        # pretraining overrides per system ("birq": an ablation or variant, "bestrq": the ladder's bestrq8192)
        self.overrides = {system: list(extra) for system, extra in (overrides or {}).items()}
        self.systems = list(systems)
        # the probe's CTC aligner: this run's supervised topline unless given (ablations use their seed's)
        self.aligner = Path(aligner) if aligner else self.out / "finetune" / "topline" / "checkpoint_last.pt"
        # valid is decoded too when the preset asks (recipes are chosen on it, never on test)
        self.eval_sets = (("valid",) if preset.get("decode_valid") else ()) + TEST_SETS

    # ---- corpus
    def corpus(self) -> dict:
        def build():
            run_command([BIN / "python", REPO / "manifests" / "build_corpus.py", "--out", self.corpus_dir,
                         "--size", self.corpus_preset, "--seed", str(self.corpus_seed)],
                        self.out / "logs" / "corpus.log", env=self.env,
                        line_filter=lambda l: f"   {l}" if "build_corpus" in l or "rror" in l else None)

        if corpus_complete(self.corpus_dir, self.corpus_preset, self.corpus_seed):
            print(f"-- [{self.clock.stamp()}] corpus: {self.corpus_dir} is complete, reusing it", flush=True)
        else:
            banner(self.clock, f"corpus: building preset '{self.corpus_preset}' in {self.corpus_dir}")
            t0, c0 = time.time(), child_cpu_seconds()
            build()
            self.stages.mark("corpus", signature([str(self.corpus_dir), self.corpus_preset, self.corpus_seed]),
                             [self.corpus_dir / "corpus.json"], wall_seconds=round(time.time() - t0, 1),
                             cpu_seconds=round(child_cpu_seconds() - c0, 1))
        return json.loads((self.corpus_dir / "corpus.json").read_text())

    # ---- pretraining
    def pretrain_overrides(self, system: str, save_dir: Path) -> List[str]:
        p = self.p
        return pretrain_overrides(
            self.corpus_dir, save_dir, self.seed, system, p["pretrain_updates"],
            p.get("pretrain_max_tokens", p["max_tokens"]), p["log_interval"], p["model"],
            extra=self.overrides.get(system, ()),
            keep_checkpoints=bool(p.get("probe")),
            save_interval=p.get("save_interval_updates"))

    def pretrain(self, system: str) -> Path:
        save_dir = self.out / "pretrain" / system
        ov = self.pretrain_overrides(system, save_dir)
        updates = 1 if system == "none" else self.p["pretrain_updates"]
        title = {"none": "init checkpoint for 'no pretraining' (BiRQ architecture, update 0 weights)",
                 "bestrq": f"pretrain BEST-RQ ({updates} updates)",
                 "birq": f"pretrain BiRQ ({updates} updates)"}[system]
        return train_stage(self.stages, f"pretrain_{system}", signature(ov), "pretrain", "tiny_birq", ov, save_dir,
                           updates, self.env, self.clock, title, progress_tag=f"pretrain:{system}")

    # ---- finetuning
    def finetune_subset(self, system: str) -> str:
        """The labelled training subset: the whole finetune split for the topline (and when
        the preset sets no ``labelled`` size), else its first ``labelled`` utterances."""
        if system == "topline" or not self.p.get("labelled"):
            return "finetune"
        return labelled_subset(self.corpus_dir, self.p["labelled"])

    def finetune_updates(self, system: str) -> int:
        return self.p.get("topline_updates", self.p["finetune_updates"]) if system == "topline" \
            else self.p["finetune_updates"]

    def finetune_overrides(self, system: str, w2v: Path, save_dir: Path) -> List[str]:
        p = self.p
        # Each system may have its own recipe (chosen on valid); the topline uses no pretraining's.
        recipe = list(p.get("finetune_overrides", [])) + list(
            p.get("finetune_overrides_by_system", {}).get("none" if system == "topline" else system, []))
        return finetune_overrides(self.corpus_dir, w2v, save_dir, self.seed, self.finetune_subset(system),
                                  self.finetune_updates(system), p["max_tokens"], p["log_interval"], recipe)

    def finetune(self, system: str, w2v: Path) -> Path:
        save_dir = self.out / "finetune" / system
        ov = self.finetune_overrides(system, w2v, save_dir)
        updates = self.finetune_updates(system)
        pre_sig = self.stage_identity(f"pretrain_{'none' if system == 'topline' else system}")
        return train_stage(self.stages, f"finetune_{system}", signature([ov, pre_sig]), "finetune", "tiny_ctc", ov,
                           save_dir, updates, self.env, self.clock,
                           f"finetune {SYSTEM_LABELS[system]} with CTC ({updates} updates, "
                           f"{self.finetune_subset(system)})", progress_tag=f"finetune:{system}")

    def stage_identity(self, name: str):
        return stage_identity(self.stages, name)

    # ---- decoding
    def decode(self, system: str, ckpt: Path, test: str) -> dict:
        return decode_stage(self.stages, f"decode_{system}_{test}", self.stage_identity(f"finetune_{system}"),
                            self.corpus_dir, ckpt, test, self.out / "decode" / system, self.env, self.clock,
                            f"decode {SYSTEM_LABELS[system]} on {test}", SYSTEM_LABELS[system])

    # ---- frozen evaluation
    def phoneme_labels(self) -> None:
        """``<split>.phn`` and ``dict.phn.txt`` for the phoneme task, made once per corpus from the
        transcripts (espeak-ng, which the corpus builder already uses; ``manifests/make_labels.py
        --phonemes``). Written beside a scratch copy and moved in, so the corpus's .ltr / .wrd stay."""
        corpus = self.corpus_dir
        if all((corpus / f"{s}.phn").exists() for s in PHONEME_SPLITS) and (corpus / "dict.phn.txt").exists():
            return
        scratch = self.out / "phoneme_labels"
        for split in PHONEME_SPLITS:  # finetune first: the phoneme dictionary is made from it
            run_command([BIN / "python", REPO / "manifests" / "make_labels.py", corpus / f"{split}.tsv",
                         "--transcripts", corpus / f"{split}.wrd", "--output-dir", scratch, "--phonemes"]
                        + (["--phoneme-dict"] if split == "finetune" else []),
                        self.out / "logs" / f"phonemes_{split}.log", env=self.env,
                        line_filter=lambda l: f"   {l}" if "rror" in l else None)
        for name in [f"{s}.phn" for s in PHONEME_SPLITS] + ["dict.phn.txt"]:
            os.replace(scratch / name, corpus / name)

    def frozen(self, tag: str, upstream) -> dict:
        """``birq-fairseq superb`` of ``upstream`` (a checkpoint or "fbank") as a resumable stage
        ``frozen_<tag>``; returns the superb JSON."""
        out_json = self.out / "frozen" / f"{tag}.json"
        args = ["-m", "birq_fairseq", "superb", "--upstream", str(upstream), "--data", str(self.corpus_dir),
                "--json", str(out_json), "--cache", str(self.out / "frozen" / "cache")] + FROZEN_ARGS
        upstream_id = [] if str(upstream) == "fbank" else [Path(upstream).stat().st_mtime]

        def action():
            self.phoneme_labels()
            run_command([BIN / "python"] + args, self.out / "frozen" / f"{tag}.log", env=self.env,
                        line_filter=lambda l: f"   {l}" if ("PER" in l or "rror" in l) else None)
            return {"result": json.loads(out_json.read_text())}

        return run_stage(self.stages, f"frozen_{tag}", signature([args, upstream_id]), [out_json], action,
                         self.clock, f"frozen evaluation of {tag} ({upstream})")["result"]

    # ---- label-quality probe
    def probe(self, test: str = "test_seen") -> dict:
        """PNMI / purity of the anchor and enhanced codes over pretraining (every saved
        checkpoint of BiRQ and BEST-RQ), against characters force-aligned by the supervised
        topline (``python -m birq_fairseq probe``); ``{system: [result per checkpoint]}``."""
        aligner = self.aligner
        results = OrderedDict()
        for system in ("bestrq", "birq"):
            if system not in self.systems:
                continue
            save_dir = self.out / "pretrain" / system
            ckpts = sorted(save_dir.glob("checkpoint_*_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
            if not ckpts or int(ckpts[-1].stem.rsplit("_", 1)[-1]) != self.p["pretrain_updates"]:
                ckpts.append(save_dir / "checkpoint_last.pt")
            if system == "birq" and "none" in self.systems:
                # the untrained init is BiRQ's own starting point (same seed and architecture): update 0
                ckpts.insert(0, self.out / "pretrain" / "none" / "checkpoint_last.pt")
            out_json = self.out / "probe" / f"{system}_{test}.json"
            args = ["-m", "birq_fairseq", "probe", "--pretrained"] + [str(p) for p in ckpts] + [
                "--aligner", str(aligner), "--data", str(self.corpus_dir), "--subset", test, "--json", str(out_json)]

            def action(args=args, out_json=out_json, system=system):
                run_command([BIN / "python"] + args, self.out / "probe" / f"{system}_{test}.log", env=self.env,
                            line_filter=lambda l: f"   {l}" if ("pnmi" in l or "rror" in l) else None)
                return {"result": json.loads(out_json.read_text()),
                        "command": "python " + " ".join(a.replace(str(REPO) + "/", "") for a in args)}

            sig = signature([args, self.stage_identity(f"pretrain_{system}"), self.stage_identity("finetune_topline"),
                             aligner.stat().st_mtime])
            marker = run_stage(self.stages, f"probe_{system}_{test}", sig, [out_json], action, self.clock,
                               f"label-quality probe of {SYSTEM_LABELS[system]} over pretraining ({test})")
            results[system] = marker["result"]
        return results

    # ---- everything
    def run(self, pretrain_only: bool = False) -> dict:
        corpus = self.corpus()
        ckpts = {}
        # BiRQ first, then BEST-RQ with the same budget, then the untrained init.
        for system in ("birq", "bestrq", "none"):
            if system in self.systems:
                ckpts[system] = self.pretrain(system)
        if pretrain_only:
            return {"corpus": corpus, "results": OrderedDict(), "timings": self.stages.timings()}
        finetuned = {s: self.finetune(s, ckpts[s]) for s in SYSTEMS if s in ckpts}
        if self.p.get("topline") and "none" in ckpts:
            finetuned["topline"] = self.finetune("topline", ckpts["none"])
        results: Dict[str, Dict[str, dict]] = OrderedDict()
        for s in TABLE_ROWS:
            if s in finetuned:
                results[s] = OrderedDict((t, self.decode(s, finetuned[s], t)) for t in self.eval_sets)
        summary = {"corpus": corpus, "results": results}
        if self.p.get("frozen"):  # the frozen evaluation of each starting point (the init: random init)
            summary["frozen"] = OrderedDict((s, frozen_rows(self.frozen(s, ckpts[s]))) for s in SYSTEMS if s in ckpts)
        if self.p.get("probe") and ("topline" in finetuned or self.aligner.exists()):
            summary["probe"] = self.probe()
        summary["timings"] = self.stages.timings()
        return summary

    def collect(self) -> dict:
        """What run() would return, from finished stages only (nothing is run)."""
        corpus = json.loads((self.corpus_dir / "corpus.json").read_text())
        results: Dict[str, Dict[str, dict]] = OrderedDict()
        for s in TABLE_ROWS:
            for t in self.eval_sets:
                m = self.stages.load(f"decode_{s}_{t}")
                if m and "result" in m:
                    results.setdefault(s, OrderedDict())[t] = m["result"]
        results = OrderedDict((s, r) for s, r in results.items() if len(r) == len(self.eval_sets))
        return {"corpus": corpus, "results": results, "timings": self.stages.timings()}

    def pretrain_logs(self) -> Dict[str, Dict[str, List[dict]]]:
        logs = OrderedDict()
        for s in ("birq", "bestrq"):
            path = self.out / "pretrain" / s / "train.log"
            if path.exists():
                logs[SYSTEM_LABELS[s]] = parse_fairseq_log(path)
        return logs


def resolve_preset(args) -> dict:
    """The preset named by ``args.preset`` with the command line's explicit overrides."""
    preset = dict(PRESETS[args.preset])
    for key in ("pretrain_updates", "finetune_updates", "max_tokens"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.corpus_preset:
        preset["corpus"] = args.corpus_preset
    return preset
