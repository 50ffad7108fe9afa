"""Building blocks of the BiRQ benchmark harness (see run.py for the command).

Everything here runs on whatever device the tensors are on (the harness uses CPU).
On CPU every op is synchronous, so wall-clock timers around Python calls are exact.
"""

import contextlib
import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN_DIR = os.path.join(REPO, "examples", "pretrain")
for _path in (REPO, PRETRAIN_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from birq_fairseq.criterions.birq_criterion import BirqCriterion, BirqCriterionConfig  # noqa: E402
from birq_fairseq.models.birq import BirqConfig, BirqModel, resolve_enhanced_layer  # noqa: E402
from pretrain_recipes import section_dict  # noqa: E402

SAMPLE_RATE = 16000

# --------------------------------------------------------------------------- configs
# "small": the model of the ratio study (part 1). Per-token cost proportions match the
# base model: the enhanced head (M x D x V) is ~2-4% of the encoder, as for base with
# V=8192 (0.4*V / (12*L*D) = 3%); with V=8192 on a 256-dim model the head alone
# would be ~27% of a 4-layer encoder, which measures the head, not the k-layer pass.
SMALL = dict(
    encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_attention_heads=4,
    conv_channels=32, conv_pos=32, conv_pos_groups=16,
    anchor_codebook_size=1024, enhanced_codebook_size=1024,
    mask_prob=0.4, mask_length=10, dropout=0.1, attention_dropout=0.1,
    encoder_layerdrop=0.0,
)
# The shapes of the recipes, read from examples/pretrain/*.yaml into BirqConfig as
# fairseq-hydra-train reads them (pretrain_recipes.section_dict: every field, the recipe's values
# over the dataclass's defaults), so k = round(0.7 L) and the Gumbel temperature are the recipe's.
# Only the benchmark's own changes are made here, each stated:
BENCH_CHANGES = dict(fp16=False)  # every shape: fp32 (a CPU measurement; the GPU check sets its precision itself)
SHAPE_RECIPES = {
    # name: (recipe, changes on top of BENCH_CHANGES)
    "tiny": ("tiny_birq", {}),
    # layerdrop 0 (recipe 0.05) so every step runs the same layers (timing, FLOP count)
    "base": ("base_birq_librispeech", dict(encoder_layerdrop=0.0)),
    # the paper's 10-layer Conformer (setting C2): layerdrop already 0 in the recipe
    "conformer": ("conformer_birq_librispeech", {}),
}
# The BEST-RQ recipe of a shape: the BiRQ recipe with the enhanced stream off (tests/test_benchmarks.py).
BESTRQ_RECIPES = {"tiny": "tiny_bestrq", "base": "base_bestrq_librispeech"}


def recipe_shape(name: str) -> dict:
    """BirqConfig keyword arguments of benchmark shape ``name``: its recipe's model plus the stated changes."""
    recipe, changes = SHAPE_RECIPES[name]
    return section_dict(recipe, "model", BirqConfig, **dict(BENCH_CHANGES, **changes))


# examples/pretrain/tiny_birq.yaml's model: 4 x 96, k = round(0.7 x 4) = 3, tau = 0.5 fixed.
TINY = recipe_shape("tiny")
# base_birq_librispeech.yaml's: 12 x 768, V = 8192, k = round(0.7 x 12) = 8 (the paper's depth).
BASE = recipe_shape("base")
# conformer_birq_librispeech.yaml's, the paper's LibriSpeech model: a 10-layer Conformer (768,
# FFN 3072, 8 heads, relative positions, ESPnet attention), ~155M parameters; k = round(0.7 x 10) = 7.
CONFORMER = recipe_shape("conformer")
SHAPES = {"tiny": TINY, "base": BASE, "conformer": CONFORMER}


def enhanced_layer(overrides: dict) -> int:
    """k of a shape: its enhanced_layer, or round(0.7 L) when unset (as BirqModel resolves it)."""
    return resolve_enhanced_layer(BirqConfig(**overrides))


VARIANTS = {
    "bestrq": dict(enhanced_stream=False),
    "birq": dict(enhanced_stream=True, enhanced_label_grad=True),
    "birq_nograd": dict(enhanced_stream=True, enhanced_label_grad=False),
}


# BiRQ variants: the label-generator levers (model config switches), where this BirqModel has them.
LEVERS = {"birq+shared_subsampling": dict(mask_after_subsampling=True),
          "birq+ckpt_generator": dict(enhanced_checkpoint_activations=True),
          "birq+both": dict(mask_after_subsampling=True, enhanced_checkpoint_activations=True)}


def model_overrides(base: dict, variant: str, **extra) -> dict:
    over = dict(base)
    over.update(VARIANTS[variant])
    over.update(extra)
    return over


def system_overrides(shape: dict, system: str) -> dict:
    """BirqConfig keyword arguments of a BiRQ-family system (a variant or a lever) at a shape."""
    if system in LEVERS:
        return model_overrides(shape, "birq", **LEVERS[system])
    return model_overrides(shape, system)


def build_system(system: str, shape: dict, baseline_overrides: Optional[dict] = None):
    """(model, criterion, optimizer, sample transform) of one system at one shape: a BiRQ-family
    system (``VARIANTS`` or ``LEVERS``) at ``shape``, or fairseq's wav2vec 2.0 / HuBERT, always their
    base recipes (baselines.py) plus ``baseline_overrides[system]``. Used by run.py and gpu_check.py."""
    if system in ("wav2vec2", "hubert"):
        import baselines as BL  # fairseq's models: imported only when a baseline is measured

        over = (baseline_overrides or {}).get(system)
        if system == "wav2vec2":
            return (*BL.build_wav2vec2(over), lambda s: s)
        return (*BL.build_hubert(over), BL.add_hubert_labels)
    return (*build(system_overrides(shape, system)), lambda s: s)


def build(overrides: dict, seed: int = 0, lr: float = 1e-4):
    """(model, criterion, optimizer) in training mode, as fairseq would build them."""
    torch.manual_seed(seed)
    cfg = BirqConfig(**{k: v for k, v in overrides.items()})
    cfg.fp16 = False  # II("common.fp16") has no common group outside hydra
    model = BirqModel(cfg)
    model.train()
    task = SimpleNamespace(cfg=SimpleNamespace(sample_rate=SAMPLE_RATE))
    criterion = BirqCriterion(BirqCriterionConfig(), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    return model, criterion, optimizer


def make_sample(batch: int, seconds: float, seed: int = 0) -> dict:
    """Speech-like synthetic batch of equal-length utterances (no padding)."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    f0 = 100 + 150 * torch.rand(batch, 1, generator=g)
    wave = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 6))
    wave = 0.1 * wave + 0.01 * torch.randn(batch, n, generator=g)
    return {"id": torch.arange(batch), "net_input": {"source": wave.float(), "padding_mask": None}}


def train_step(model, criterion, optimizer, sample) -> float:
    """One pretraining update: forward (model + criterion), backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = criterion(model, sample)
    loss.backward()
    optimizer.step()
    updates = getattr(model, "num_updates", 0) + 1
    model.set_num_updates(updates)
    model.num_updates = updates  # fairseq's wav2vec 2.0 / HuBERT keep no counter of their own
    return float(loss.detach())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runners: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                steps_per_round: int = 1) -> Dict[str, List[float]]:
    """Run every runner once per round (ABCABC...), rotating the start so no runner always
    follows the same one; returns per-runner lists of per-step seconds (one per round)."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t = sum(timed(runners[name]) for _ in range(steps_per_round)) / steps_per_round
            times[name].append(t)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def ratio_stats(times: Dict[str, List[float]], name: str, ref: str) -> dict:
    """Side-by-side ratio name / ref with its noise, from per-round times of ``interleaved``.

    ``ratio`` = median of the per-round ratios (load common to a round cancels), ``ratio_min`` /
    ``ratio_max`` = their spread over the ``rounds`` rounds; ``ratio_of_medians`` for comparison."""
    if len(times[name]) != len(times[ref]) or not times[name]:
        raise ValueError(f"{name} and {ref} need the same, non-zero number of rounds "
                         f"({len(times[name])} vs {len(times[ref])})")
    per_round = [a / b for a, b in zip(times[name], times[ref])]
    return {"ratio": median(per_round), "ratio_of_medians": median(times[name]) / median(times[ref]),
            "ratio_min": min(per_round), "ratio_max": max(per_round), "rounds": len(per_round)}


def fmt_spread(value: Optional[float], spread: Optional[Sequence[float]], digits: int = 3) -> str:
    """"1.549 [1.502-1.601]": a median with its min-max over the rounds ("-" when there is no value)."""
    if value is None:
        return "-"
    if not spread:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{spread[0]:.{digits}f}-{spread[1]:.{digits}f}]"


# --------------------------------------------------------------------------- machine load
# A run is marked "under load" when, at any of its load samples, the 1-minute load average minus
# the benchmark's own share exceeds this fraction of the CPUs (on 2 CPUs: more than one other
# busy thread). The benchmark's own share is its threads x (1 - exp(-elapsed / 60 s)): the kernel's
# 1-minute average is an exponential average, so at the start sample (elapsed ~ 0) none of it is
# the benchmark's, and after a few minutes all of its threads are.
LOAD_OTHER_FRACTION = 0.5


def load_sample(at: str, elapsed_s: float, loadavg: Optional[Sequence[float]] = None) -> dict:
    """One reading of the load averages (1, 5, 15 min) at a named point of the run."""
    return {"at": at, "elapsed_s": float(elapsed_s),
            "loadavg": [float(x) for x in (os.getloadavg() if loadavg is None else loadavg)]}


def load_verdict(samples: Sequence[dict], cpus: int, threads: int,
                 fraction: float = LOAD_OTHER_FRACTION) -> dict:
    """Whether a run was taken under load, from its load samples (``load_sample``); see LOAD_OTHER_FRACTION."""
    threshold = fraction * cpus
    others = []
    for s in samples:
        own = threads * (1.0 - math.exp(-s["elapsed_s"] / 60.0))
        others.append(max(0.0, s["loadavg"][0] - own))
    worst = max(others) if others else None
    return {"samples": [dict(s, other_load=o) for s, o in zip(samples, others)],
            "cpus": cpus, "bench_threads": threads, "threshold": threshold,
            "max_other_load": worst, "under_load": worst is not None and worst > threshold,
            "rule": f"under load if, at any sample, the 1-min load average minus the benchmark's own "
                    f"threads x (1 - exp(-elapsed/60 s)) exceeds {fraction:g} x CPUs = {threshold:g}"}


def fmt_load(load: dict) -> str:
    """One line for the printed tables: the load samples and the verdict."""
    trail = " -> ".join(f"{s['loadavg'][0]:.2f} ({s['at']})" for s in load["samples"])
    head = ("UNDER LOAD: timings and ratios are not for conclusions; re-run on an idle machine"
            if load["under_load"] else "idle enough")
    worst = load["max_other_load"]
    worst = "-" if worst is None else f"{worst:.2f}"
    return (f"Machine load: {head}. 1-min load average {trail}; {load['cpus']} CPUs, "
            f"{load['bench_threads']} benchmark thread(s); other load at most {worst} vs threshold "
            f"{load['threshold']:g} ({load['rule']})")


# --------------------------------------------------------------------------- FLOPs
def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """convolution_backward = one forward-sized conv per requested gradient (input, weight).

    torch 2.14's built-in formula ignores ``groups`` for the weight gradient and counts a
    grouped conv's backward ``groups`` times too high: for the encoder's positional conv
    (768 channels, 16 groups, kernel 128) that is 8.0 instead of 0.94 GFLOP on 2 s of
    audio, a quarter of a base-model step."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_step_flops(model, criterion, optimizer, sample, seed: Optional[int] = None) -> int:
    """FLOPs (matmul/conv/attention, forward + backward) of one training step.

    The mask and the Gumbel noise are random, so the masked-frame count (heads) varies a
    little step to step; the caller reseeds to make counts reproducible."""
    from torch.utils.flop_counter import FlopCounterMode

    import numpy as np

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    default_rng = np.random.default_rng
    if seed is not None:
        # The mask sets how many frames reach the heads. fairseq's compute_mask_indices
        # draws span starts from an unseeded np.random.default_rng(None) per utterance:
        # seed those (and np.random / torch) for the counted step only.
        np.random.seed(seed)
        torch.manual_seed(seed)
        np.random.default_rng = lambda s=None: default_rng(seed if s is None else s)
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            train_step(model, criterion, optimizer, sample)
    finally:
        np.random.default_rng = default_rng
    return int(counter.get_total_flops())


_MM_CACHE = {}


def matmul_rate(n: int = 2048, reps: int = 3) -> float:
    """Dense fp32 FLOP/s of this process on a large square torch.mm: best of ``reps``
    (the machine's rate when not preempted; a conservative reference for fractions)."""
    if n not in _MM_CACHE:
        _MM_CACHE[n] = (torch.randn(n, n), torch.randn(n, n))
    a, b = _MM_CACHE[n]
    times = [timed(lambda: torch.mm(a, b)) for _ in range(reps)]
    return 2 * n ** 3 / min(times)


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure_step_memory(overrides: dict, batch: int, seconds: float, repeats: int = 2, warmup: int = 2) -> dict:
    """Peak resident memory of one training step above the resident memory before it.

    Run in a fresh process with MALLOC_MMAP_THRESHOLD_ set (see run.py): every large
    tensor is then its own mmap, returned to the OS when freed, so RSS tracks live tensor
    bytes. Warm-up steps (two by default; one suffices for Adam's state) allocate the optimizer
    state; then, per repeat, free the gradients, trim malloc, read RSS (baseline: weights +
    Adam state + batch), reset the kernel's peak-RSS counter, run one step and read the
    peak. The delta is the step's transient memory (gradients, activations saved for
    backward, logits, temporaries)."""
    model, criterion, optimizer = build(overrides)
    sample = make_sample(batch, seconds)
    for _ in range(warmup):
        train_step(model, criterion, optimizer, sample)
    deltas, peaks, bases = [], [], []
    for _ in range(repeats):
        # The previous step's gradients go before the baseline (train_step frees them first
        # thing anyway): otherwise a model whose gradients outweigh its activations (base
        # size, short batch) reads the step's peak against memory it frees at its start.
        optimizer.zero_grad(set_to_none=True)
        _trim()
        base = _rss_bytes()
        if not _reset_hwm():
            raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs)")
        train_step(model, criterion, optimizer, sample)
        peak = _hwm_bytes()
        deltas.append(peak - base)
        peaks.append(peak)
        bases.append(base)
    params = sum(p.numel() for p in model.parameters())
    return {"step_peak_delta_bytes": max(deltas), "peak_rss_bytes": max(peaks),
            "baseline_rss_bytes": min(bases), "params": params}


# --------------------------------------------------------------------------- breakdown
class PieceTimer:
    """Exclusive wall time of named pieces of the forward pass (nested calls subtract)."""

    def __init__(self):
        self.totals: Dict[str, float] = {}
        self._stack: List[List] = []

    @contextlib.contextmanager
    def piece(self, name):
        start = time.perf_counter()
        self._stack.append([name, 0.0])
        try:
            yield
        finally:
            _, child = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.totals[name] = self.totals.get(name, 0.0) + elapsed - child
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, obj, attr, name):
        original = getattr(obj, attr)

        def wrapper(*args, **kwargs):
            with self.piece(name):
                return original(*args, **kwargs)

        setattr(obj, attr, wrapper)
        return original


def instrument(model, timer: PieceTimer):
    """Wrap the model's pieces with the timer (instance attributes: the class is untouched).

    run_encoder called from inside enhanced_targets is attributed to "extra_k_layer_pass";
    the main run_encoder call to "main_encoder"."""
    def attribute(method_name, main_piece):
        # Called inside enhanced_targets: the label generator's extra pass; else the main pass.
        method = getattr(model, method_name)

        def wrapped(*args, **kwargs):
            inside_enhanced = any(frame[0] == "enhanced_quantizer+gumbel" for frame in timer._stack)
            with timer.piece("extra_k_layer_pass" if inside_enhanced else main_piece):
                return method(*args, **kwargs)

        setattr(model, method_name, wrapped)

    attribute("run_encoder", "main_encoder")
    attribute("embed", "conv_subsampling")
    timer.wrap(model.frontend, "forward", "frontend_logmel")
    timer.wrap(model, "time_mask", "masking_numpy")
    timer.wrap(model.anchor_quantizer, "forward", "anchor_quantizer")
    timer.wrap(model.anchor_head, "forward", "heads")
    if model.enhanced_head is not None:
        timer.wrap(model.enhanced_head, "forward", "heads")
        timer.wrap(model, "enhanced_targets", "enhanced_quantizer+gumbel")


def breakdown_step(model, criterion, optimizer, sample, timer: PieceTimer) -> Dict[str, float]:
    """One instrumented training step -> seconds per piece (sums to the step time)."""
    timer.totals = {}
    optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with timer.piece("other_forward+loss"):
        loss, _, _ = criterion(model, sample)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    t3 = time.perf_counter()
    model.set_num_updates(model.num_updates + 1)
    out = dict(timer.totals)
    out["backward"] = t2 - t1
    out["optimizer"] = t3 - t2
    out["total"] = t3 - t0
    return out


def dump_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
