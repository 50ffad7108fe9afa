"""Stage runner of the demo's tooling (run_demo.py, run_results.py, regime_grid.py, label_health.py).

Everything drives fairseq through its console scripts (`fairseq-hydra-train`,
`fairseq-generate`) exactly as a user would, and adds only bookkeeping:

* stages with completion markers (``STAGE_DIR/<name>.json``), so a rerun skips what is
  finished and an interrupted fairseq run resumes from its ``checkpoint_last.pt``;
* streaming of each subprocess to the console (compact progress lines) and to a log;
* the two actions every pipeline runs: a ``fairseq-hydra-train`` stage and a
  ``fairseq-generate`` decode stage (:func:`train_stage`, :func:`decode_stage`);
* parsing of fairseq's ``common.log_format=json`` log files and of fairseq-generate's
  WER/CER outputs.

No fairseq import happens in this module (the console scripts are separate processes),
so the tooling's own logic is cheap to test.
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

import editdistance

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "birq_fairseq"
BIN = Path(sys.executable).parent

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
    different settings, ``clean`` moves its outputs aside so fairseq does not resume from a
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
        print("   settings changed since the last attempt: starting afresh", flush=True)
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


def clean_run_dir(save_dir: Path) -> Optional[Path]:
    """Settings changed: move a fairseq run's checkpoints and json log aside, into
    ``<save_dir>/superseded/<time>/``, so the run starts afresh and nothing already written is
    lost (an override spelled differently reads as a change too). Returns that folder, if any."""
    old = [p for p in list(Path(save_dir).glob("checkpoint*.pt")) + [Path(save_dir) / "train.log"] if p.exists()]
    if not old:
        return None
    keep = Path(save_dir) / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    keep.mkdir(parents=True, exist_ok=True)
    for p in old:
        os.replace(p, keep / p.name)
    print(f"   the previous attempt's checkpoints and log are kept in {keep}", flush=True)
    return keep


# --------------------------------------------------------------------------- the two actions
def train_stage(stages: Stages, name: str, sig: str, config_dir: str, config_name: str, overrides: List[str],
                save_dir: Path, updates: int, env: Dict[str, str], clock: Clock, title: str,
                progress_tag: Optional[str] = None) -> Path:
    """``fairseq-hydra-train --config-dir examples/<config_dir> --config-name <config_name> <overrides>``
    as stage ``name``: skipped when finished with the same ``sig``, resumed from its
    checkpoint_last.pt when interrupted, started afresh (old checkpoints removed) when the
    settings changed. TensorBoard event files go to ``<save_dir>/tensorboard`` (an output,
    not a setting: it is not part of ``sig``). Returns the run's checkpoint_last.pt."""
    save_dir = Path(save_dir)
    ckpt = save_dir / "checkpoint_last.pt"
    overrides = list(overrides) + [f"common.tensorboard_logdir={save_dir / 'tensorboard'}"]

    def action():
        save_dir.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():
            print(f"   resuming from {ckpt}", flush=True)
        run_command([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / config_dir,
                     "--config-name", config_name] + overrides, save_dir / "stdout.log", env=env,
                    line_filter=FairseqProgress(progress_tag or name, updates, clock))
        return {"command": f"fairseq-hydra-train --config-dir examples/{config_dir} --config-name {config_name} "
                           + " ".join(overrides)}

    run_stage(stages, name, sig, [ckpt], action, clock, title, clean=lambda: clean_run_dir(save_dir))
    return ckpt


def decode_args(corpus: Path, ckpt: Path, subset: str, results_dir: Path) -> list:
    """fairseq-generate's arguments: greedy CTC decoding of ``subset`` scored by WER (letters)."""
    return [corpus, "--task", "birq_finetuning", "--path", ckpt, "--gen-subset", subset, "--scoring", "wer",
            "--post-process", "letter", "--user-dir", PLUGIN, "--results-path", results_dir, "--cpu",
            "--num-workers", "0", "--max-tokens", "2000000"]


def decode_stage(stages: Stages, name: str, upstream, corpus: Path, ckpt: Path, subset: str, results_dir: Path,
                 env: Dict[str, str], clock: Clock, title: str, label: str) -> dict:
    """``fairseq-generate`` of ``subset`` as stage ``name`` (rerun when ``upstream``, the finetuning
    stage's identity, changes); returns :func:`parse_generate_output`'s result."""
    results_dir = Path(results_dir)
    out_txt = results_dir / f"generate-{subset}.txt"
    args = decode_args(corpus, ckpt, subset, results_dir)

    def action():
        if out_txt.exists():
            out_txt.unlink()  # partial output of an interrupted run
        run_command([BIN / "fairseq-generate"] + args, results_dir / f"stdout-{subset}.log", env=env,
                    line_filter=lambda l: f"   {l.split(' - ', 1)[-1]}" if (
                        "WER" in l or "rror" in l or "Traceback" in l) else None)
        result = parse_generate_output(out_txt)
        print(f"   {label} {subset}: WER {result['wer']:.2f}  CER {result['cer']:.2f}", flush=True)
        return {"result": result, "command": "fairseq-generate " + " ".join(map(str, args))}

    marker = run_stage(stages, name, signature([args, upstream]), [out_txt], action, clock, title)
    return marker["result"]


def stage_identity(stages: Stages, name: str):
    """Settings and completion time of an upstream stage: any rerun of it invalidates the
    stages built on its output."""
    m = stages.load(name) or {}
    if "finished_at" not in m:  # markers written before finished_at existed
        return m.get("signature")
    return [m.get("signature"), m["finished_at"]]


# An absolute path up to the repository's own top-level folders, whatever checkout recorded it.
_CHECKOUT_PREFIX = re.compile(r"(?<![\w.])/(?:[^\s/]+/)*?(?=(?:birq_fairseq|data|results_runs|demo_runs|examples)(?:/|\s|$))")


def repo_relative(text: str) -> str:
    """Paths recorded by a run on some machine, made relative to its checkout, so a report
    does not depend on where the run happened or where the report is made."""
    return _CHECKOUT_PREFIX.sub("", text)
