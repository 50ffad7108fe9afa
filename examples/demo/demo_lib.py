"""Shared machinery of the BiRQ demo (run_demo.py) and the comparison (run_results.py).

Everything here drives fairseq through its console scripts (`fairseq-hydra-train`,
`fairseq-generate`) exactly as a user would, and adds only bookkeeping:

* stages with completion markers (``STAGE_DIR/<name>.json``), so a rerun skips what is
  finished and an interrupted fairseq run resumes from its ``checkpoint_last.pt``;
* streaming of each subprocess to the console (compact progress lines) and to a log;
* parsing of fairseq's ``common.log_format=json`` log files;
* WER/CER parsing of ``fairseq-generate --results-path`` outputs, tables and plots.

No fairseq import happens in this module (the console scripts are separate processes),
so the demo's own logic is cheap to test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "birq_fairseq"
BIN = Path(sys.executable).parent

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
# For pretrained encoders (after FT_FAST, whose lr it overrides): train the conv subsampling,
# light channel masking, lr 1e-3, and the encoder frozen for the first 30 % of the updates
# (only the CTC projection trains), as wav2vec 2.0's low-resource recipes keep pretrained features.
FT_FROZEN_FIRST = ["optimization.lr=[0.001]", "model.feature_grad_mult=1.0", "model.mask_channel_prob=0.05",
                   "model.freeze_finetune_updates={UPDATES_30PCT}"]

PRESETS: Dict[str, Dict] = {
    # for tests only: seconds, not a meaningful result
    "tiny": dict(corpus="tiny", pretrain_updates=5, finetune_updates=5, max_tokens=64000,
                 log_interval=1, model=MODEL_SMALL),
    "quick": dict(corpus="quick", pretrain_updates=150, finetune_updates=300, max_tokens=128000,
                  log_interval=10, model=MODEL_SMALL, finetune_overrides=FT_FAST),
    "default": dict(corpus="default", pretrain_updates=800, finetune_updates=1000, max_tokens=128000,
                    log_interval=10, model=MODEL_SMALL, finetune_overrides=FT_FAST),
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


def thread_env(threads: Optional[int] = None) -> Dict[str, str]:
    """Environment for fairseq subprocesses: one intra-op pool sized to the cores we use."""
    threads = threads or max(1, min(os.cpu_count() or 1, 2))
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::UserWarning")
    return env


def git_version() -> str:
    """The commit the code ran at (with '+dirty' when the plugin or tooling had local edits)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "birq_fairseq", "examples"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- printing
class Clock:
    def __init__(self):
        self.t0 = time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def stamp(self) -> str:
        return fmt_secs(self.elapsed())


def fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def banner(clock: Clock, text: str) -> None:
    line = f"== [{clock.stamp()}] {text} "
    print("\n" + line + "=" * max(0, 88 - len(line)), flush=True)


# --------------------------------------------------------------------------- stages
def signature(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Stages:
    """Completion markers: ``<dir>/<name>.json`` = {signature, outputs, seconds, ...}.

    A stage counts as finished when its marker exists, its signature matches the
    current settings, and every output it declared still exists.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str) -> Optional[dict]:
        try:
            return json.loads(self.path(name).read_text())
        except (OSError, ValueError):
            return None

    def done(self, name: str, sig: str) -> bool:
        marker = self.load(name)
        if not marker or marker.get("signature") != sig or marker.get("status") == "started":
            return False
        return all(Path(p).exists() for p in marker.get("outputs", []))

    def mark(self, name: str, sig: str, outputs: Sequence[Path], **info) -> dict:
        marker = dict(signature=sig, outputs=[str(p) for p in outputs], finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                      finished_at=time.time(), **info)
        tmp = self.path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, self.path(name))
        return marker

    def timings(self) -> Dict[str, dict]:
        out = OrderedDict()
        for p in sorted(self.dir.glob("*.json")):
            m = self.load(p.stem)
            if m and m.get("status") != "started":
                out[p.stem] = {k: m.get(k) for k in ("wall_seconds", "cpu_seconds")}
        return out


def run_stage(stages: Stages, name: str, sig: str, outputs: Sequence[Path], action: Callable[[], Optional[dict]],
              clock: Clock, title: str, clean: Optional[Callable[[], None]] = None) -> dict:
    """Run ``action`` unless the stage is finished; time it (wall and child CPU seconds).

    A "started" marker is written first. When a previous attempt (finished or not) used
    different settings, ``clean`` removes its outputs so fairseq does not resume from a
    stale checkpoint_last.pt; an interrupted attempt with the same settings is resumed.
    """
    if stages.done(name, sig):
        marker = stages.load(name)
        print(f"-- [{clock.stamp()}] {title}: done already ({marker.get('wall_seconds', 0):.0f} s when run), "
              f"skipping", flush=True)
        return marker
    banner(clock, title)
    previous = stages.load(name)
    if previous and previous.get("signature") != sig and clean is not None:
        print("   settings changed since the last attempt: removing its outputs", flush=True)
        clean()
    stages.mark(name, sig, [], status="started")
    t0, c0 = time.time(), child_cpu_seconds()
    info = action() or {}
    wall, cpu = time.time() - t0, child_cpu_seconds() - c0
    missing = [str(p) for p in outputs if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"stage {name} finished without its outputs: {missing}")
    print(f"-- [{clock.stamp()}] {title}: finished in {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    return stages.mark(name, sig, outputs, status="done", wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1),
                       **info)


def child_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- subprocesses
class StageFailed(RuntimeError):
    pass


def run_command(cmd: Sequence[str], log_path: Path, env: Optional[dict] = None,
                line_filter: Optional[Callable[[str], Optional[str]]] = None, cwd: Optional[Path] = None) -> None:
    """Run ``cmd``, append all output to ``log_path``, echo filtered lines to stdout."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        log.flush()
        print(f"   $ {shlex.join(map(str, cmd))}", flush=True)
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd or REPO), text=True, bufsize=1)
        tail: List[str] = []
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                shown = line_filter(line.rstrip()) if line_filter else line.rstrip()
                if shown:
                    print(shown, flush=True)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        code = proc.wait()
    if code != 0:
        raise StageFailed(f"command failed with exit code {code} (full log: {log_path}):\n   "
                          + "\n   ".join(tail[-25:]))


class FairseqProgress:
    """Turn fairseq's stdout into compact progress lines (with ETA) for the console."""

    PASS = ("error", "Error", "Traceback", "WARNING", "warning:", "Exception", "done training", "Saved checkpoint")

    def __init__(self, tag: str, max_update: int, clock: Clock):
        self.tag, self.max_update, self.clock = tag, max_update, clock
        self.t0 = time.time()
        self.first_update: Optional[int] = None

    def __call__(self, line: str) -> Optional[str]:
        record = parse_json_line(line)
        if record is not None:
            return self.format(record)
        if any(p in line for p in self.PASS) and len(line) < 400:
            return f"   [{self.tag}] {line.split(' - ', 1)[-1]}"
        return None

    def format(self, r: dict) -> Optional[str]:
        if "num_updates" in r:  # training progress line
            n = int(r["num_updates"])
            if self.first_update is None:
                self.first_update = n
                self.t0 = time.time()
            done = n - self.first_update
            rate = done / max(time.time() - self.t0, 1e-6)
            eta = (self.max_update - n) / rate if rate > 0 and done > 0 else float("nan")
            keys = [k for k in ("loss", "anchor_acc", "anchor_code_ppl", "enhanced_acc", "enhanced_code_ppl",
                                "gumbel_temp", "wer") if k in r]
            metrics = " ".join(f"{k}={r[k]:g}" for k in keys)
            eta_s = fmt_secs(eta) if math.isfinite(eta) else "?"
            return (f"   [{self.clock.stamp()}] {self.tag} update {n}/{self.max_update} {metrics} "
                    f"({rate:.2f} upd/s, eta {eta_s})")
        if "valid_loss" in r:
            keys = [k for k in ("valid_loss", "valid_anchor_acc", "valid_enhanced_acc", "valid_enhanced_code_ppl",
                                "valid_wer", "valid_uer") if k in r]
            return f"   [{self.clock.stamp()}] {self.tag} validation: " + " ".join(f"{k}={r[k]:g}" for k in keys)
        return None


# --------------------------------------------------------------------------- fairseq logs
def _number(v):
    if isinstance(v, (int, float)):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def parse_json_line(line: str) -> Optional[dict]:
    """A fairseq json log record (``{"epoch": ..., ...}``) possibly after a logging prefix."""
    start = line.find('{"')
    if start < 0 or not line.rstrip().endswith("}"):
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(record, dict) or "epoch" not in record:
        return None
    return {k: _number(v) for k, v in record.items()}


def parse_fairseq_log(path) -> Dict[str, List[dict]]:
    """Parse a ``common.log_format=json`` log (``common.log_file``) into
    {"train": per-log_interval records, "valid": validation records, "epoch": end-of-epoch
    summaries}, keys without their ``train_``/``valid_`` prefix, sorted by num_updates.

    fairseq appends one more copy of each record per epoch to ``log_file`` (its handler is
    re-added); records are de-duplicated by (kind, num_updates), keeping the last copy,
    which also makes a resumed run's log (same updates logged twice) come out right.
    """
    kinds: Dict[str, Dict[Tuple, dict]] = {"train": {}, "valid": {}, "epoch": {}}
    with open(path, errors="replace") as f:
        for line in f:
            r = parse_json_line(line)
            if r is None:
                continue
            if "valid_num_updates" in r:
                kind, prefix = "valid", "valid_"
            elif "train_num_updates" in r:
                kind, prefix = "epoch", "train_"
            elif "num_updates" in r:
                kind, prefix = "train", ""
            else:
                continue
            # note: per-interval train records have a "train_wall" key of their own
            rec = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in r.items()}
            if "num_updates" not in rec:
                continue
            kinds[kind][(rec["num_updates"], rec.get("epoch"))] = rec
    return {kind: sorted(recs.values(), key=lambda r: (r["num_updates"], r.get("epoch", 0)))
            for kind, recs in kinds.items()}


def curve(records: List[dict], key: str) -> Tuple[List[int], List[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["num_updates"]))
            ys.append(float(v))
    return xs, ys


# --------------------------------------------------------------------------- decoding results
WER_RE = re.compile(r"Generate (\S+) with beam=\d+: WER: ([0-9.]+)")


def parse_generate_output(path) -> dict:
    """WER printed by ``fairseq-generate --scoring wer`` plus our own WER/CER from the H-/T- lines."""
    import editdistance

    text = Path(path).read_text(errors="replace")
    found = WER_RE.findall(text)
    if not found:
        raise ValueError(f"{path}: no 'Generate ... WER:' line (did fairseq-generate finish?)")
    refs, hyps = {}, {}
    for line in text.splitlines():
        if line.startswith("T-"):
            key, _, ref = line.partition("\t")
            refs[key[2:]] = ref
        elif line.startswith("H-"):
            parts = line.split("\t")
            hyps[parts[0][2:]] = parts[2] if len(parts) > 2 else ""
    word_err = word_tot = char_err = char_tot = 0
    for key, ref in refs.items():
        hyp = hyps.get(key, "")
        word_err += editdistance.eval(ref.split(), hyp.split())
        word_tot += len(ref.split())
        ref_c, hyp_c = " ".join(ref.split()), " ".join(hyp.split())
        char_err += editdistance.eval(ref_c, hyp_c)
        char_tot += len(ref_c)
    return {
        "wer": float(found[-1][1]),
        "wer_check": 100.0 * word_err / max(word_tot, 1),
        "cer": 100.0 * char_err / max(char_tot, 1),
        "utterances": len(refs),
        "words": word_tot,
    }


def wer_table(results: Dict[str, Dict[str, dict]], metric: str = "wer") -> str:
    """Markdown table: rows no pretraining / BEST-RQ / BiRQ, columns seen / unseen.

    ``results[system][test_set]`` is either one decode result (``{"wer": ..}``) or a list of
    them (one per seed), shown as mean ± std.
    """
    lines = [f"| system | {metric.upper()} seen voices | {metric.upper()} unseen voices |", "| --- | ---: | ---: |"]
    for system in TABLE_ROWS:
        if system not in results:
            continue
        cells = []
        for test in TEST_SETS:
            value = results[system].get(test)
            if value is None:
                cells.append("–")
            elif isinstance(value, list):
                vals = [v[metric] for v in value]
                m, s = mean_std(vals)
                cells.append(f"{m:.1f} ± {s:.1f} (n={len(vals)})")
            else:
                cells.append(f"{value[metric]:.1f}")
        lines.append(f"| {SYSTEM_LABELS[system]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_list(value) -> list:
    """A decode result, or a list of them (one per seed), as a list."""
    return value if isinstance(value, list) else [value]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


# --------------------------------------------------------------------------- plots
def plot_pretraining(logs: Dict[str, Dict[str, List[dict]]], out_png: Path, title: str = "") -> None:
    """2x2: anchor/enhanced accuracy and code perplexity vs updates, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    panels = [("anchor_acc", "anchor stream: masked accuracy"), ("enhanced_acc", "enhanced stream: masked accuracy"),
              ("anchor_code_ppl", "anchor stream: code perplexity"),
              ("enhanced_code_ppl", "enhanced stream: code perplexity (→1 = collapse)")]
    # one colour per run (the default cycle repeats after 10 runs)
    palette = plt.get_cmap("tab10" if len(logs) <= 10 else "tab20")
    colours = {name: palette(i % palette.N) for i, name in enumerate(logs)}
    for ax, (key, label) in zip(axes.flat, panels):
        for name, parsed in logs.items():
            xs, ys = curve(parsed["train"], key)
            if xs:
                ax.plot(xs, ys, label=name, color=colours[name])
            vx, vy = curve(parsed["valid"], key)
            if vx:
                ax.plot(vx, vy, "o", ms=3, color=colours[name])
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "enhanced_code_ppl":  # spans ~1..V: log scale shows the collapse
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("update")
    fig.suptitle(title or "pretraining curves (lines: train, dots: valid)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_probe(probes: Dict[str, Dict[str, list]], out_png: Path, title: str = "") -> None:
    """PNMI − chance and char purity vs pretraining updates, one line per (run, system, stream).

    ``probes[run][system]`` is the probe's list of per-checkpoint results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run, per_system in probes.items():
        for system, series in per_system.items():
            series = sorted(series if isinstance(series, list) else [series], key=lambda r: r.get("num_updates") or 0)
            for stream in sorted({k for r in series for k in r.get("streams", {})}):
                if system == "birq" and stream.startswith("anchor") and "bestrq" in per_system:
                    continue  # the same fixed labels as BEST-RQ's
                xs = [r.get("num_updates") or 0 for r in series if stream in r["streams"]]
                ms = [r["streams"][stream] for r in series if stream in r["streams"]]
                label = f"{SYSTEM_LABELS.get(system, system)} {stream} ({run})"
                style = "-" if stream.startswith("enhanced") else "--"
                axes[0].plot(xs, [m["pnmi"] - m["pnmi_chance"] for m in ms], style, marker="o", label=label)
                axes[1].plot(xs, [m["char_purity"] for m in ms], style, marker="o", label=label)
    axes[0].set_ylabel("PNMI − chance")
    axes[1].set_ylabel("char purity")
    for ax in axes:
        ax.set_xlabel("pretraining updates")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_wer_bars(results: Dict[str, Dict[str, object]], out_png: Path, metric: str = "wer", title: str = "") -> None:
    """Grouped bars (seen / unseen) per system; lists (seeds) get mean ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in SYSTEMS if s in results]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38
    for j, test in enumerate(TEST_SETS):
        means, stds = [], []
        for s in systems:
            v = results[s].get(test)
            vals = [x[metric] for x in v] if isinstance(v, list) else ([v[metric]] if v else [])
            m, sd = mean_std(vals)
            means.append(m)
            stds.append(sd)
        xs = [i + (j - 0.5) * width for i in range(len(systems))]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=4, label=test.replace("test_", "") + " voices")
        for b, m in zip(bars, means):
            if math.isfinite(m):
                ax.text(b.get_x() + b.get_width() / 2, m, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(systems)))
    ax.set_xticklabels([SYSTEM_LABELS[s] for s in systems])
    ax.set_ylabel(f"{metric.upper()} (%)")
    ax.set_title(title or f"{metric.upper()} after CTC finetuning", fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


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


def clean_run_dir(save_dir: Path) -> None:
    """Remove a fairseq run's checkpoints and json log (settings changed: start afresh)."""
    for p in list(Path(save_dir).glob("checkpoint*.pt")) + [Path(save_dir) / "train.log"]:
        if p.exists():
            p.unlink()


class Pipeline:
    """Corpus -> pretrain BiRQ / BEST-RQ / an untrained init -> CTC finetune x3 -> decode x6."""

    def __init__(self, out: Path, preset: dict, corpus_dir: Path, corpus_preset: str, corpus_seed: int = 1,
                 seed: int = 1, clock: Optional[Clock] = None, threads: Optional[int] = None,
                 birq_overrides: Sequence[str] = (), systems: Sequence[str] = SYSTEMS,
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
        self.birq_overrides = list(birq_overrides)
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
        updates = p["pretrain_updates"]
        ov = [
            f"common.user_dir={PLUGIN}", f"task.data={self.corpus_dir}",
            f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir}/hydra",
            "common.log_format=json", f"common.log_file={save_dir}/train.log",
            f"common.log_interval={p['log_interval']}", f"common.seed={self.seed}",
            f"optimization.max_update={updates}", f"dataset.max_tokens={p.get('pretrain_max_tokens', p['max_tokens'])}",
            f"dataset.validate_interval_updates={max(updates // 2, 1)}",
            f"checkpoint.save_interval_updates={p.get('save_interval_updates', max(updates // 4, 5))}",
            f"lr_scheduler.warmup_updates={max(updates // 10, 1)}",
        ] + (["checkpoint.keep_interval_updates=-1"] if p.get("probe") else []) + [
            "common.cpu=true", "dataset.num_workers=0",
        ] + [f"{k}={v}" for k, v in p["model"].items()]
        if system == "birq":
            ov += ["model.enhanced_stream=true"] + self.birq_overrides
        elif system == "bestrq":
            ov += ["model.enhanced_stream=false"]
        elif system == "none":
            # The untrained starting point: the BiRQ architecture and seed, written by a
            # single update at learning rate 0 (Adam's step and weight decay both scale
            # with the lr, so the weights are exactly the seeded initialisation).
            ov = [o for o in ov if not o.startswith(("optimization.max_update=", "dataset.validate_interval"))]
            ov += ["model.enhanced_stream=true", "optimization.max_update=1", "optimization.lr=[0.0]",
                   "dataset.disable_validation=true"]
        return ov

    def pretrain(self, system: str) -> Path:
        save_dir = self.out / "pretrain" / system
        ckpt = save_dir / "checkpoint_last.pt"
        ov = self.pretrain_overrides(system, save_dir)
        updates = 1 if system == "none" else self.p["pretrain_updates"]
        title = {"none": "init checkpoint for 'no pretraining' (BiRQ architecture, update 0 weights)",
                 "bestrq": f"pretrain BEST-RQ ({updates} updates)",
                 "birq": f"pretrain BiRQ ({updates} updates)"}[system]

        action = self._hydra_train_action("pretrain", "tiny_birq", ov, save_dir, ckpt, f"pretrain:{system}", updates)

        run_stage(self.stages, f"pretrain_{system}", signature(ov), [ckpt], action, self.clock, title,
                  clean=lambda: clean_run_dir(save_dir))
        return ckpt

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
        updates = self.finetune_updates(system)
        # Each system may have its own recipe (chosen on valid); the topline uses no pretraining's.
        recipe = p.get("finetune_overrides_by_system", {}).get("none" if system == "topline" else system, [])
        recipe = [o.replace("{UPDATES_30PCT}", str(int(0.3 * updates))) for o in recipe]
        return [
            f"common.user_dir={PLUGIN}", f"task.data={self.corpus_dir}", f"model.w2v_path={w2v}",
            f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir}/hydra",
            "common.log_format=json", f"common.log_file={save_dir}/train.log",
            f"common.log_interval={p['log_interval']}", f"common.seed={self.seed}",
            f"dataset.train_subset={self.finetune_subset(system)}", "dataset.valid_subset=valid",
            f"optimization.max_update={updates}", f"dataset.max_tokens={p['max_tokens']}",
            f"dataset.validate_interval_updates={updates}",
            f"checkpoint.save_interval_updates={max(updates // 4, 5)}",
            "common.cpu=true", "dataset.num_workers=0",
        ] + list(p.get("finetune_overrides", [])) + recipe

    def finetune(self, system: str, w2v: Path) -> Path:
        save_dir = self.out / "finetune" / system
        ckpt = save_dir / "checkpoint_last.pt"
        ov = self.finetune_overrides(system, w2v, save_dir)
        updates = self.finetune_updates(system)

        action = self._hydra_train_action("finetune", "tiny_ctc", ov, save_dir, ckpt, f"finetune:{system}", updates)

        pre_sig = self.stage_identity(f"pretrain_{'none' if system == 'topline' else system}")
        run_stage(self.stages, f"finetune_{system}", signature([ov, pre_sig]), [ckpt], action, self.clock,
                  f"finetune {SYSTEM_LABELS[system]} with CTC ({updates} updates, {self.finetune_subset(system)})",
                  clean=lambda: clean_run_dir(save_dir))
        return ckpt

    def _hydra_train_action(self, stage_dir, config_name, overrides, save_dir, ckpt, progress_name, updates):
        """A stage action: fairseq-hydra-train with examples/<stage_dir>/<config_name>.yaml,
        resuming from checkpoint_last.pt if it exists, with a condensed progress line."""

        def action():
            save_dir.mkdir(parents=True, exist_ok=True)
            if ckpt.exists():
                print(f"   resuming from {ckpt}", flush=True)
            run_command([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / stage_dir,
                         "--config-name", config_name] + overrides, save_dir / "stdout.log", env=self.env,
                        line_filter=FairseqProgress(progress_name, updates, self.clock))
            return {"command": f"fairseq-hydra-train --config-dir examples/{stage_dir} --config-name {config_name} "
                               + " ".join(overrides)}

        return action

    def stage_identity(self, name: str):
        """Settings and completion time of an upstream stage: any rerun of it invalidates
        the stages built on its output."""
        m = self.stages.load(name) or {}
        if "finished_at" not in m:  # markers written before finished_at existed
            return m.get("signature")
        return [m.get("signature"), m["finished_at"]]

    # ---- decoding
    def decode(self, system: str, ckpt: Path, test: str) -> dict:
        res_dir = self.out / "decode" / system
        out_txt = res_dir / f"generate-{test}.txt"
        args = [self.corpus_dir, "--task", "birq_finetuning", "--path", ckpt, "--gen-subset", test,
                "--scoring", "wer", "--post-process", "letter", "--user-dir", PLUGIN,
                "--results-path", res_dir, "--cpu", "--num-workers", "0", "--max-tokens", "2000000"]

        def action():
            if out_txt.exists():
                out_txt.unlink()  # partial output of an interrupted run
            run_command([BIN / "fairseq-generate"] + args, res_dir / f"stdout-{test}.log", env=self.env,
                        line_filter=lambda l: f"   {l.split(' - ', 1)[-1]}" if (
                            "WER" in l or "rror" in l or "Traceback" in l) else None)
            result = parse_generate_output(out_txt)
            print(f"   {SYSTEM_LABELS[system]} {test}: WER {result['wer']:.2f}  CER {result['cer']:.2f}", flush=True)
            return {"result": result, "command": "fairseq-generate " + " ".join(map(str, args))}

        ft_sig = self.stage_identity(f"finetune_{system}")
        marker = run_stage(self.stages, f"decode_{system}_{test}", signature([args, ft_sig]), [out_txt], action,
                           self.clock, f"decode {SYSTEM_LABELS[system]} on {test}")
        return marker["result"]

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
