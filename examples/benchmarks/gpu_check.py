#!/usr/bin/env python
"""GPU check (issue #10): what gpu_check.sh runs once fairseq is importable. One JSON.

1. fairseq-hydra-train, the users' path: BiRQ and BEST-RQ at base size
   (examples/pretrain/base_{birq,bestrq}_librispeech.yaml, one GPU, update_freq 1) for a few
   updates in fp16 (``common.fp16``: model.half() + FP16Optimizer) and in bf16 (``common.bf16``);
   then the fp16 BiRQ run is started again with twice the updates: it must resume from its
   checkpoint_last.pt and carry on. Checks: every run exits 0, logs finite losses and saves a
   checkpoint at >= its update count; the resumed run loads the saved checkpoint, logs its first
   update right after the saved count and reaches the new one.
2. In-process step timing and memory, same batch for every system: BEST-RQ, BiRQ at
   k = round(0.7 L), and fairseq's wav2vec 2.0 and HuBERT (examples/benchmarks/baselines.py),
   and (part ``conformer``) BEST-RQ and BiRQ at the paper's 10-layer Conformer (k = 7),
   in fp16 and bf16 as fairseq's Trainer runs them (model.half() / model.bfloat16(), fairseq's
   FP16Optimizer: fp32 master weights, dynamic loss scale), interleaved rounds; BiRQ/BEST-RQ step ratio (median of per-round
   ratios), peak step memory above the memory before the step (CUDA allocator; not measured on
   CPU), audio seconds per second, speed against wav2vec 2.0.

``--cpu``: the same logic on the CPU with tiny models and 2 updates (the tested dry run).

The JSON is written after every part (``"complete": false`` until the last), so a run stopped at
its time limit still leaves what it measured. The in-process parts run first: they take seconds
on a GPU, the fairseq-hydra-train runs most of the time.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "manifests"))  # synthetic_corpus

import torch  # noqa: E402

import bench_lib as B  # noqa: E402

SCHEMA = "birq-gpu-check/1"

# BiRQ / BEST-RQ shapes: the recipes' (bench_lib.SHAPES: tiny_birq.yaml's model for the dry run,
# base_birq_librispeech.yaml's on the GPU, k = round(0.7 L)). wav2vec 2.0 and HuBERT: baselines'
# base recipes on the GPU, shrunk for the dry run:
TINY_HUBERT = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                   conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", final_dim=16,
                   conv_pos=16, conv_pos_groups=4)
TINY_W2V = dict(TINY_HUBERT, latent_vars=8)
# The Conformer shape of the dry run: the recipe's layer type, positions and attention, shrunk.
TINY_CONFORMER = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                      depthwise_conv_kernel_size=7, conv_channels=4, conv_pos=8, conv_pos_groups=2,
                      anchor_codebook_size=64, enhanced_codebook_size=64)
TINY_TRAIN = ["model.encoder_layers=2", "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64",
              "model.encoder_attention_heads=2", "model.conv_channels=4", "model.conv_pos=8",
              "model.conv_pos_groups=2", "model.anchor_codebook_size=64", "model.enhanced_codebook_size=64"]


def plan(cpu: bool) -> dict:
    if cpu:
        return dict(device="cpu", utts=8, min_s=1.0, max_s=2.0, max_tokens=64000, updates=2,
                    configs={"birq": "tiny_birq", "bestrq": "tiny_bestrq"},
                    train_overrides=TINY_TRAIN + ["common.fp16_no_flatten_grads=true"],  # no CUDA device to flatten on
                    birq=B.SHAPES["tiny"], w2v=TINY_W2V, hubert=TINY_HUBERT, batch=(2, 1.0), warmup=1, rounds=2,
                    steps=1, conformer=dict(B.SHAPES["conformer"], **TINY_CONFORMER))
    # Per-GPU batch of the base recipes: max_tokens 1.4M samples = 87.5 s of audio.
    return dict(device="cuda", utts=48, min_s=8.0, max_s=15.0, max_tokens=1400000, updates=8,
                configs={"birq": "base_birq_librispeech", "bestrq": "base_bestrq_librispeech"},
                train_overrides=[], birq=B.SHAPES["base"], w2v={}, hubert={}, batch=(6, 15.0),
                warmup=3, rounds=5, steps=2, conformer=B.SHAPES["conformer"])


# --------------------------------------------------------------------------- 1. fairseq-hydra-train
TRAIN_RUN_TIMEOUT_S = 240


def read_log(path):
    """[(num_updates, loss)] of the json train_inner lines, and the whole text."""
    text = open(path).read()
    points = []
    for line in text.splitlines():
        if "[train_inner]" not in line or "{" not in line:
            continue
        stats = json.loads(line[line.index("{"):])
        points.append((int(stats["num_updates"]), float(stats["loss"])))
    return points, text


def train_run(p, name, precision, data, save_dir, updates, log_path) -> dict:
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train"),
           "--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", p["configs"][name],
           f"common.user_dir={os.path.join(REPO, 'birq_fairseq')}", f"task.data={data}",
           f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir}/hydra",
           f"optimization.max_update={updates}", f"checkpoint.save_interval_updates={updates}",
           "checkpoint.no_epoch_checkpoints=true", f"dataset.max_tokens={p['max_tokens']}",
           "dataset.disable_validation=true", "dataset.num_workers=0", "common.log_format=json",
           "common.log_interval=1", "distributed_training.distributed_world_size=1", "optimization.update_freq=[1]",
           "lr_scheduler.warmup_updates=1", f"common.cpu={str(p['device'] == 'cpu').lower()}",
           f"common.fp16={str(precision == 'fp16').lower()}", f"common.bf16={str(precision == 'bf16').lower()}",
           *p["train_overrides"]]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:  # a hung run must not take the rest of the check's time with it
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO),
                                  timeout=TRAIN_RUN_TIMEOUT_S)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = f"timeout after {TRAIN_RUN_TIMEOUT_S} s"
    points, text = read_log(log_path)
    saved = re.findall(r"Saved checkpoint .* @ (\d+) updates", text)
    row = {"system": name, "precision": precision, "updates": updates, "returncode": returncode,
           "wall_s": time.perf_counter() - start, "logged": points, "log": log_path,
           "saved_at_update": int(saved[-1]) if saved else None,
           "losses_finite": bool(points) and all(math.isfinite(loss) for _, loss in points)}
    row["ok"] = returncode == 0 and row["losses_finite"] and (row["saved_at_update"] or 0) >= updates
    if returncode != 0:
        row["log_tail"] = text[-3000:]
    return row


def train_runs(p, work, log) -> dict:
    from synthetic_corpus import write_manifest

    data = os.path.join(work, "corpus")
    write_manifest(data, "train", p["utts"], seed=0, min_seconds=p["min_s"], max_seconds=p["max_s"])
    write_manifest(data, "valid", 2, seed=1, min_seconds=p["min_s"], max_seconds=p["max_s"])
    runs, n = [], p["updates"]
    for precision in ("fp16", "bf16"):
        for name in ("birq", "bestrq"):
            log(f"  [train] {name} {precision}, {n} updates")
            save = os.path.join(work, f"{name}_{precision}")
            runs.append(train_run(p, name, precision, data, save, n, os.path.join(work, f"{name}_{precision}.log")))
    log(f"  [resume] birq fp16, {n} -> {2 * n} updates")
    resumed = train_run(p, "birq", "fp16", data, os.path.join(work, "birq_fp16"), 2 * n,
                        os.path.join(work, "birq_fp16_resume.log"))
    first = min((u for u, _ in resumed["logged"]), default=None)
    last = max((u for u, _ in resumed["logged"]), default=None)
    text = open(resumed["log"]).read()
    resumed.update(loaded_checkpoint=f"@ {n} updates" in text, first_update=first, last_update=last,
                   resumed_ok=resumed["ok"] and f"@ {n} updates" in text and first == n + 1 and last == 2 * n)
    return {"runs": runs, "resume": resumed}


# --------------------------------------------------------------------------- 2. in-process timing
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def fairseq_optimizer(params, precision, device):
    """fairseq's FP16Optimizer (fp32 master weights, dynamic loss scale for fp16) over Adam,
    as its Trainer builds it for common.fp16 / common.bf16."""
    from omegaconf import OmegaConf
    from fairseq import optim
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.optim.adam import FairseqAdamConfig

    cfg = OmegaConf.structured(FairseqConfig())
    OmegaConf.set_struct(cfg, False)
    cfg.optimizer = OmegaConf.structured(FairseqAdamConfig(lr=[1e-4], adam_betas="(0.9,0.98)", adam_eps=1e-6))
    cfg.optimizer._name = "adam"
    cfg.common.fp16, cfg.common.bf16 = precision == "fp16", precision == "bf16"
    cfg.common.fp16_no_flatten_grads = device == "cpu"  # flattening allocates on the current CUDA device
    return optim.FP16Optimizer.build_optimizer(cfg, params)


def half_step(model, criterion, optimizer, sample):
    """One update as fairseq's Trainer.train_step does it in fp16/bf16 (no clipping)."""
    optimizer.zero_grad()
    loss, _, _ = criterion(model, sample)
    optimizer.backward(loss)
    try:
        optimizer.clip_grad_norm(0.0)  # computes the norm: raises OverflowError on fp16 overflow
        optimizer.step()
    except OverflowError:  # fairseq lowers the loss scale and skips the update
        optimizer.zero_grad()
    updates = getattr(model, "num_updates", 0) + 1
    model.set_num_updates(updates)
    model.num_updates = updates  # fairseq's wav2vec 2.0 / HuBERT keep no counter of their own
    return float(loss.detach())


def to_device(sample, device, dtype):
    """fairseq's Trainer moves the batch to the device and its float tensors to the model's dtype."""
    def move(x):
        if torch.is_tensor(x):
            x = x.to(device)
            return x.to(dtype) if x.is_floating_point() else x
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, list):
            return [move(v) for v in x]
        return x
    return move(sample)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timing(p, precision, systems, log, shape=None) -> dict:
    """Step time and memory of ``systems`` at ``shape`` (default: the plan's BiRQ shape)."""
    shape = shape or p["birq"]
    device = p["device"]
    batch, seconds = p["batch"]
    base_sample = B.make_sample(batch, seconds)
    dtype = DTYPES[precision]
    built, losses, memory = {}, {}, {}
    for system in systems:
        model, criterion, _, prepare = B.build_system(system, shape,
                                                      {"wav2vec2": p["w2v"], "hubert": p["hubert"]})
        model, criterion = model.to(device=device, dtype=dtype), criterion.to(dtype=dtype)  # as fairseq's Trainer
        optimizer = fairseq_optimizer([x for x in model.parameters() if x.requires_grad], precision, device)
        sample = to_device(prepare(base_sample), device, dtype)
        run = (lambda m=model, c=criterion, o=optimizer, s=sample: half_step(m, c, o, s))
        losses[system] = [run() for _ in range(p["warmup"])]
        if device == "cuda":  # peak of one step above what is allocated before it
            synchronize(device)
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            losses[system].append(run())
            synchronize(device)
            memory[system] = torch.cuda.max_memory_allocated() - before
        built[system] = (run, sum(x.numel() for x in model.parameters()))

    def timed(run):
        def go():
            synchronize(device)
            for _ in range(p["steps"]):
                losses_last.append(run())
            synchronize(device)
        return go

    losses_last = []
    log(f"  [timing] {precision}: {', '.join(systems)}; batch {batch}x{seconds:g}s, {p['rounds']} rounds")
    times = B.interleaved({s: timed(built[s][0]) for s in systems}, rounds=p["rounds"], warmup=0)
    times = {s: [t / p["steps"] for t in v] for s, v in times.items()}
    rows = []
    for s in systems:
        step = B.median(times[s])
        row = {"system": s, "params": built[s][1], "step_s": step, "audio_s_per_s": batch * seconds / step,
               "step_mem_bytes": memory.get(s), "losses_finite": all(math.isfinite(x) for x in losses[s])}
        if s != "bestrq":  # ratios: median and [min, max] over the interleaved rounds
            r = B.ratio_stats(times, s, "bestrq")
            row["step_ratio_vs_bestrq"] = r["ratio"]
            row["step_ratio_vs_bestrq_range"] = [r["ratio_min"], r["ratio_max"]]
            if memory.get(s) and memory.get("bestrq"):
                row["mem_ratio_vs_bestrq"] = memory[s] / memory["bestrq"]
        if "wav2vec2" in times and s != "wav2vec2":
            r = B.ratio_stats(times, "wav2vec2", s)
            row["speed_vs_wav2vec2"] = r["ratio"]
            row["speed_vs_wav2vec2_range"] = [r["ratio_min"], r["ratio_max"]]
        rows.append(row)
    k, L = B.enhanced_layer(shape), shape["encoder_layers"]
    return {"precision": precision, "layer_type": shape.get("layer_type", "transformer"), "batch": batch, "seconds": seconds, "k": k, "L": L,
            "step_target": 1 + k / L + 0.05, "mem_target": 1 + k / L, "rows": rows,
            "all_losses_finite": all(math.isfinite(x) for x in losses_last)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU: tiny models, 2 updates")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "gpu_check.json"))
    ap.add_argument("--work", help="work dir (default: a temporary one, removed)")
    ap.add_argument("--parts", default="timing,conformer,train",
                    help="comma-separated, run in this order: timing (base shape), conformer, train")
    ap.add_argument("--setup-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device visible to torch; use --cpu for the dry run")
    p = plan(args.cpu)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    import fairseq

    res = {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "dry_run_cpu": args.cpu, "python": platform.python_version(), "torch": torch.__version__,
           "fairseq": fairseq.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if p["device"] == "cuda" else platform.processor() or "cpu",
           "setup_seconds": args.setup_seconds, "checks": {}}
    parts = args.parts.split(",")
    unknown = set(parts) - {"timing", "conformer", "train"}
    if unknown:
        ap.error(f"--parts: unknown part(s) {sorted(unknown)}; choose from timing, conformer, train")
    work = args.work or tempfile.mkdtemp(prefix="birq_gpu_check_")

    def save(complete):
        res["complete"] = complete
        res["ok"] = complete and bool(res["checks"]) and all(res["checks"].values())
        res["wall_seconds"] = time.perf_counter() - t0
        B.dump_json(args.out, res)

    try:
        for part in parts:
            if part == "train":
                log("fairseq-hydra-train: fp16 and bf16, BiRQ and BEST-RQ, then a resume")
                res["train"] = train_runs(p, work, log)
                for r in res["train"]["runs"]:
                    res["checks"][f"train_{r['system']}_{r['precision']}"] = r["ok"]
                res["checks"]["resume"] = (res["train"]["resume"]["resumed_ok"]
                                           and res["train"]["resume"]["losses_finite"])
            else:  # in-process timing: the base shape with the baselines, or the Conformer
                key, systems, shape = (("timing", ["bestrq", "birq", "wav2vec2", "hubert"], None) if part == "timing"
                                       else ("conformer", ["bestrq", "birq"], p["conformer"]))
                res[key] = {}
                for precision in ("bf16", "fp16"):
                    res[key][precision] = t = timing(p, precision, systems, log, shape)
                    res["checks"][f"{key}_{precision}_losses_finite"] = t["all_losses_finite"] and all(
                        r["losses_finite"] for r in t["rows"])
                    save(False)
            save(False)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    save(True)
    for precision, t in [(f"{key} {prec}", t) for key in ("timing", "conformer") for prec, t in res.get(key, {}).items()]:
        for r in t["rows"]:
            extra = "".join(f" {k}={r[k]:.3f}" for k in ("step_ratio_vs_bestrq", "mem_ratio_vs_bestrq",
                                                          "speed_vs_wav2vec2") if r.get(k) is not None)
            log(f"  {precision} {r['system']}: {r['step_s']:.3f} s/step, {r['audio_s_per_s']:.1f} audio s/s{extra}")
    log(f"checks: {res['checks']}")
    log(f"wrote {args.out} ({'OK' if res['ok'] else 'FAILED'})")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
