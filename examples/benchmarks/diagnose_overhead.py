#!/usr/bin/env python
"""Where BiRQ's cost above 1 + k/L goes, and what candidate fixes of birq.py would buy.

    .venv/bin/python examples/benchmarks/diagnose_overhead.py [--L 4 --k 1 --rounds 12]

Variants, all on the part-1 "small" model and batch (4 x 4 s), patched at run time on the
model *instance* (birq.py is not modified):
  bestrq                 reference
  birq                   as in birq.py
  birq_reorder           label generator (enhanced_targets) run before the main encoder,
                         so its backward runs after the main encoder's activations are freed
  birq_reorder_ckpt      + the generator's conv subsampling under activation checkpointing
  birq_no_frontend_grad  the generator's conv subsampling without gradient (changes the
                         method: the label gradient stops at layer 1's input)
Prints step-time ratios (interleaved rounds, median of per-round ratios) and step-memory
ratios (fresh process, peak RSS above the pre-step RSS, as run.py part 1).
"""

import argparse
import json
import os
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.utils.checkpoint as checkpoint  # noqa: E402

import bench_lib as B  # noqa: E402
from birq_fairseq.modules.frontend import FRAMES_PER_STEP  # noqa: E402

VARIANTS = ["bestrq", "birq", "birq_reorder", "birq_reorder_ckpt", "birq_no_frontend_grad"]


def forward_generator_first(self, source, padding_mask=None, mask=True, features_only=False, layer=None,
                            corpus_key=None):
    """BirqModel.forward (pretraining path) with enhanced_targets computed before the main encoder."""
    feats, frame_lengths = self.frontend(source, padding_mask)
    batch, frames, n_mels = feats.shape
    steps = frames // FRAMES_PER_STEP
    step_padding = torch.arange(steps, device=feats.device)[None, :] >= (frame_lengths // FRAMES_PER_STEP)[:, None]
    mask_indices = self.time_mask(step_padding)
    frame_mask = mask_indices.repeat_interleave(FRAMES_PER_STEP, dim=1)[..., None]
    masked_feats = torch.where(frame_mask, torch.randn_like(feats) * self.cfg.mask_noise_std, feats)
    enhanced = self.enhanced_targets(feats, step_padding, mask_indices)
    x = self.channel_mask(self.encoder_input(masked_feats))
    x, _ = self.run_encoder(x, step_padding, layer)
    predicted = x[mask_indices]
    stacked = feats.reshape(batch, steps, FRAMES_PER_STEP * n_mels)[mask_indices]
    return {
        "anchor_logits": self.anchor_head(predicted).view(-1, self.cfg.anchor_num_codebooks,
                                                          self.cfg.anchor_codebook_size),
        "anchor_labels": self.anchor_quantizer(stacked),
        "enhanced_logits": self.enhanced_head(predicted).view(-1, self.cfg.enhanced_num_codebooks,
                                                              self.cfg.enhanced_codebook_size),
        "enhanced_targets": enhanced,
    }


def patch_generator_input(model, how):
    """Change how enhanced_targets computes its encoder input (checkpoint / no grad)."""
    encoder_input, enhanced_targets = model.encoder_input, model.enhanced_targets
    inside = {"flag": False}

    def encoder_input_patched(feats):
        if not inside["flag"] or not torch.is_grad_enabled():
            return encoder_input(feats)
        if how == "ckpt":
            return checkpoint.checkpoint(encoder_input, feats, use_reentrant=False)
        with torch.no_grad():
            return encoder_input(feats)

    def enhanced_targets_patched(*args, **kwargs):
        inside["flag"] = True
        try:
            return enhanced_targets(*args, **kwargs)
        finally:
            inside["flag"] = False

    model.encoder_input = encoder_input_patched
    model.enhanced_targets = enhanced_targets_patched


def build_variant(name, L, k):
    if name == "bestrq":
        return B.build(B.model_overrides(B.SMALL, "bestrq", encoder_layers=L))
    model, crit, opt = B.build(B.model_overrides(B.SMALL, "birq", encoder_layers=L, enhanced_layer=k))
    if name in ("birq_reorder", "birq_reorder_ckpt"):
        model.forward = types.MethodType(forward_generator_first, model)
    if name == "birq_reorder_ckpt":
        patch_generator_input(model, "ckpt")
    if name == "birq_no_frontend_grad":
        patch_generator_input(model, "nograd")
    return model, crit, opt


def memory_worker(L, k):
    out = {}
    for name in VARIANTS:
        model, crit, opt = build_variant(name, L, k)
        sample = B.make_sample(4, 4.0)
        for _ in range(2):
            B.train_step(model, crit, opt, sample)
        deltas = []
        for _ in range(2):
            B._trim()
            base = B._rss_bytes()
            B._reset_hwm()
            B.train_step(model, crit, opt, sample)
            deltas.append(B._hwm_bytes() - base)
        out[name] = max(deltas)
        del model, crit, opt
        B._trim()
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=4)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--_memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory:
        memory_worker(args.L, args.k)
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run([sys.executable, __file__, "--_memory", "--L", str(args.L), "--k", str(args.k),
                           "--threads", str(args.threads)], env=env, capture_output=True, text=True, check=True)
    memory = json.loads(proc.stdout.strip().splitlines()[-1])
    sample = B.make_sample(4, 4.0)
    built = {name: build_variant(name, args.L, args.k) for name in VARIANTS}
    runners = {name: (lambda mco=mco: B.train_step(*mco, sample)) for name, mco in built.items()}
    times = B.interleaved(runners, rounds=args.rounds, warmup=1)
    print(f"L={args.L} k={args.k}: 1 + k/L = {1 + args.k / args.L:.3f}, batch 4x4s, {args.rounds} rounds")
    print("| variant | step s | step ratio | step-mem MiB | mem ratio |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        r = B.ratio_stats(times, name, "bestrq")["ratio"]
        print(f"| {name} | {B.median(times[name]):.3f} | {r:.3f} | {memory[name] / 2 ** 20:.1f} | "
              f"{memory[name] / memory['bestrq']:.3f} |")


if __name__ == "__main__":
    main()
