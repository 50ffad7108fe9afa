#!/usr/bin/env python
"""BiRQ benchmark harness (issues #5, #10). One command:

    .venv/bin/python examples/benchmarks/run.py [--quick] [--data MANIFEST_DIR] [--parts 1,2,3,4,5]

Prints tables, writes examples/benchmarks/results/latest.json and latest.png. Every side-by-side
ratio comes from interleaved rounds (A B, B A, ...) and is reported as the median of the per-round
ratios with its min-max over the rounds; the load average is sampled at the start, before each part
and at the end, and a run taken under load is marked (bench_lib.load_verdict; README "Reading the
ratios"). The model shapes are the recipes' (bench_lib.SHAPE_RECIPES).

1. step time and step memory: BiRQ (layer k of L) and BiRQ without label gradient vs
   BEST-RQ, same model and batch, interleaved rounds, median of per-round ratios; memory
   = peak RSS of one step above the RSS before it, in a separate process (see
   bench_lib.measure_step_memory).
2. throughput (audio s / s) and FLOP rate (FlopCounterMode over one step) as a fraction of
   the same process's dense fp32 torch.mm rate: tiny; base-shaped (12x768, k = round(0.7 L) = 8)
   next to fairseq's own wav2vec 2.0 and HuBERT pretraining steps (baselines.py) on the same
   audio; the paper's 10-layer Conformer (k = 7); BiRQ's label-generator levers where the model
   has them. Part 6 (printed with it): GPU-hours at LibriSpeech scale from the FLOPs per audio s.
3. label cost: fairseq's HuBERT two-iteration pipeline vs one BiRQ run (label_pipeline.py).
4. scaling of the step with utterance length and batch size, with a per-piece breakdown.
5. step memory at the paper's shapes (BEST-RQ, BiRQ, levers), with part 2's step ratios.
"""

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bench_lib as B  # noqa: E402

RESULTS = os.path.join(HERE, "results")
# birq-bench/3: every side-by-side ratio with its spread over the rounds (*_range, rounds), the load
# samples and the under-load mark ("load", "under_load"), the recipe and tau of the part 2 rows.
SCHEMA = "birq-bench/3"
STEP_SLACK = 0.05
# Audio-seconds-per-second speed-ups over fairseq's wav2vec 2.0 that the 12 x 768 rows must reach.
SPEED_TARGETS = {"bestrq": 3.5, "birq": 2.0}
LEVERS = B.LEVERS  # BiRQ's label-generator levers (model config switches)
TINY_SYSTEMS = ["bestrq", "birq"]
PAPER_SYSTEMS = ["bestrq", "birq", "birq+shared_subsampling", "birq+ckpt_generator"]  # "+both": part 1 only
BASE_SYSTEMS = ["wav2vec2", "hubert", *PAPER_SYSTEMS]
SHAPES = B.SHAPES  # tiny, base, conformer: the recipes' models (bench_lib.SHAPE_RECIPES)


def available(systems):
    """The systems this checkout can build (lever switches appear with the model's config fields)."""
    from dataclasses import fields

    from birq_fairseq.models.birq import BirqConfig

    names = {f.name for f in fields(BirqConfig)}
    return [s for s in systems if s not in LEVERS or set(LEVERS[s]) <= names]


def plan(quick: bool) -> dict:
    if quick:
        return dict(quick=True,
            ratio_grid=[(4, 2)], nograd_k={4: 2}, lever_grid=[(4, 2)], ratio_batch=(2, 2.0), ratio_rounds=3,
            tput=[("tiny", SHAPES["tiny"], 2, 4.0, 3, TINY_SYSTEMS), ("base", SHAPES["base"], 1, 2.0, 1, BASE_SYSTEMS)],
            paper_memory=[("base", 1, 2.0)], paper_memory_steps=(1, 1),
            label_updates=3, label_utts=8, scale_len=[2.0, 4.0], scale_batch=[1, 2], scale_rounds=2,
            update_rounds=3,
        )
    return dict(
        quick=False, ratio_grid=[(4, 1), (4, 2), (4, 3), (8, 1), (8, 4), (8, 6), (8, 7)], nograd_k={4: 2, 8: 4},
        lever_grid=[(4, 1), (4, 3), (8, 1), (8, 6)],  # k = 1 and k = round(0.7 L), with each lever
        ratio_batch=(4, 4.0), ratio_rounds=15,
        # (name, shape, batch, seconds, rounds, systems): the shapes are the recipes' models (tiny: k = 3
        # of 4; base: the paper's depth k = round(0.7 L) = 8 of 12, next to fairseq's wav2vec 2.0 and
        # HuBERT; conformer: the paper's 10-layer model, k = 7); batch and length are the benchmark's.
        tput=[("tiny", SHAPES["tiny"], 2, 8.0, 5, TINY_SYSTEMS), ("base", SHAPES["base"], 1, 8.0, 3, BASE_SYSTEMS),
              ("conformer", SHAPES["conformer"], 1, 8.0, 2, PAPER_SYSTEMS)],
        # part 5: step memory at the paper's settings (shape name, batch, seconds), 1 warm-up + 1 step
        paper_memory=[("base", 1, 8.0), ("conformer", 1, 8.0)], paper_memory_steps=(1, 1),
        label_updates=50, label_utts=96, scale_len=[2.0, 4.0, 8.0, 16.0], scale_batch=[1, 2, 4, 8],
        scale_rounds=5, update_rounds=30,
    )


def ratio_configs(p: dict) -> dict:
    """name -> (L, k or None, overrides) for part 1."""
    configs = {}
    small = p.get("ratio_model", B.SMALL)
    for L in sorted({L for L, _ in p["ratio_grid"]}):
        configs[f"bestrq_L{L}"] = (L, None, B.model_overrides(small, "bestrq", encoder_layers=L))
    for L, k in p["ratio_grid"]:
        configs[f"birq_L{L}_k{k}"] = (L, k, B.model_overrides(small, "birq", encoder_layers=L, enhanced_layer=k))
    for L, k in p["nograd_k"].items():
        configs[f"birq_nograd_L{L}_k{k}"] = (
            L, k, B.model_overrides(small, "birq_nograd", encoder_layers=L, enhanced_layer=k))
    for L, k in p.get("lever_grid", []):
        for lever in available(LEVERS):
            configs[f"{lever}_L{L}_k{k}"] = (
                L, k, B.model_overrides(small, "birq", encoder_layers=L, enhanced_layer=k, **LEVERS[lever]))
    return configs


# --------------------------------------------------------------------------- part 1
def part1_step(p, log) -> dict:
    configs = ratio_configs(p)
    batch, seconds = p["ratio_batch"]
    sample = B.make_sample(batch, seconds)
    runners, flops = {}, {}
    for name, (_, _, over) in configs.items():
        model, crit, opt = B.build(over)
        flops[name] = B.count_step_flops(model, crit, opt, sample, seed=0)  # same mask for every config
        runners[name] = (lambda m=model, c=crit, o=opt: B.train_step(m, c, o, sample))
    log(f"  [step] {len(runners)} configs x {p['ratio_rounds']} interleaved rounds, batch {batch}x{seconds:g}s")
    times = B.interleaved(runners, rounds=p["ratio_rounds"], warmup=1)
    return {"batch": batch, "seconds": seconds, "rounds": p["ratio_rounds"], "times": times, "flops": flops}


def run_memory_worker(job: dict) -> dict:
    """Measure in one fresh process whose malloc returns big blocks to the OS."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-worker",
                          json.dumps(dict(job, threads=torch.get_num_threads()))],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("memory worker failed:\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def part1_memory(p, log) -> dict:
    batch, seconds = p["ratio_batch"]
    configs = {name: dict(overrides=over, batch=batch, seconds=seconds)
               for name, (_, _, over) in ratio_configs(p).items()}
    log(f"  [memory] subprocess, {len(configs)} configs")
    return run_memory_worker({"configs": configs})


def memory_worker(arg: str) -> None:
    """{"configs": {name: {overrides, batch, seconds}}, "steps": [warmup, repeats]} -> JSON line."""
    args = json.loads(arg)
    torch.set_num_threads(args["threads"])
    warmup, repeats = args.get("steps", (2, 2))
    result = {}
    for name, c in args["configs"].items():
        result[name] = B.measure_step_memory(c["overrides"], c["batch"], c["seconds"],
                                             repeats=repeats, warmup=warmup)
        B._trim()
    print(json.dumps(result))


def summarize_part1(step: dict, memory: dict, p: dict) -> list:
    rows = []
    configs = ratio_configs(p)
    for name, (L, k, _) in configs.items():
        if k is None:
            continue
        ref = f"bestrq_L{L}"
        r = B.ratio_stats(step["times"], name, ref)
        mem = memory[name]["step_peak_delta_bytes"] / memory[ref]["step_peak_delta_bytes"]
        irreducible = 1 + k / L
        rows.append({
            "config": name, "L": L, "k": k, "label_grad": "nograd" not in name,
            "lever": next((lever for lever in LEVERS if name.startswith(lever + "_")), None),
            "step_s": B.median(step["times"][name]), "bestrq_step_s": B.median(step["times"][ref]),
            "step_ratio": r["ratio"], "step_ratio_range": [r["ratio_min"], r["ratio_max"]], "rounds": r["rounds"],
            "flop_ratio": step["flops"][name] / step["flops"][ref] if "flops" in step else None,
            "irreducible": irreducible, "step_target": irreducible + STEP_SLACK,
            "step_pass": r["ratio"] <= irreducible + STEP_SLACK,
            "mem_step_bytes": memory[name]["step_peak_delta_bytes"],
            "bestrq_mem_step_bytes": memory[ref]["step_peak_delta_bytes"],
            "mem_ratio": mem, "mem_target": irreducible, "mem_pass": mem <= irreducible,
        })
    return rows


# --------------------------------------------------------------------------- part 2
def part2_throughput(p, log) -> list:
    """Every system of a shape on the same batch, interleaved with a torch.mm reference."""
    rows = []
    for name, shape, batch, seconds, rounds, systems in p["tput"]:
        systems = available(systems)
        base_sample = B.make_sample(batch, seconds)
        built, samples, flops = {}, {}, {}
        for v in systems:
            model, crit, opt, prepare = B.build_system(v, shape, p.get("baseline_overrides"))
            built[v], samples[v] = (model, crit, opt), prepare(base_sample)
            # The warm-up step of each system is the FLOP-counted step.
            flops[v] = B.count_step_flops(model, crit, opt, samples[v], seed=0)
        runners = {v: (lambda mco=built[v], s=samples[v]: B.train_step(*mco, s)) for v in systems}
        mm_rates = []
        mm_n = p.get("mm_n", 2048)
        runners["matmul"] = lambda: mm_rates.append(B.matmul_rate(n=mm_n, reps=3))
        log(f"  [throughput] {name}: {', '.join(systems)}; {batch}x{seconds:g}s, {rounds} rounds")
        times = B.interleaved(runners, rounds=rounds, warmup=0)
        times.pop("matmul")
        mm_rate = B.median(mm_rates)  # per round: best of 3 torch.mm; median over rounds
        L, k = shape["encoder_layers"], B.enhanced_layer(shape)
        recipe = B.SHAPE_RECIPES[name][0] if shape == SHAPES.get(name) else None
        for v in systems:
            step = B.median(times[v])
            # per round: this step's FLOP rate / the torch.mm rate of the same round
            fractions = [flops[v] / t / mm for t, mm in zip(times[v], mm_rates)]
            row = {
                "model": name, "recipe": recipe, "variant": v, "batch": batch, "seconds": seconds, "rounds": rounds,
                "params": sum(x.numel() for x in built[v][0].parameters()),
                "step_s": step, "audio_s_per_s": batch * seconds / step,
                "step_flops": flops[v], "flops_per_audio_s": flops[v] / (batch * seconds),
                "flop_rate": flops[v] / step, "matmul_rate": mm_rate, "mm_fraction": flops[v] / step / mm_rate,
                "mm_fraction_range": [min(fractions), max(fractions)],
                "target_mm_fraction": 0.25 if name == "base" else None,
                "pass": (flops[v] / step / mm_rate >= 0.25) if name == "base" else None,
                "birq_over_bestrq": None, "birq_over_bestrq_range": None, "flop_ratio": None, "L": L, "k": k,
                "gumbel_temp": list(B.BirqConfig(**shape).gumbel_temp) if v.startswith("birq") else None,
                "step_target": 1 + k / L + STEP_SLACK, "step_pass": None,
                "speed_vs_wav2vec2": None, "speed_vs_wav2vec2_range": None, "speed_target": None, "speed_pass": None,
            }
            if v.startswith("birq") and "bestrq" in systems:
                r = B.ratio_stats(times, v, "bestrq")
                row.update(birq_over_bestrq=r["ratio"], birq_over_bestrq_range=[r["ratio_min"], r["ratio_max"]],
                           flop_ratio=flops[v] / flops["bestrq"], step_pass=r["ratio"] <= 1 + k / L + STEP_SLACK)
            if "wav2vec2" in systems:
                # same audio: the ratio of step times is the ratio of audio seconds per second
                r = B.ratio_stats(times, "wav2vec2", v)
                target = SPEED_TARGETS.get(v) if name == "base" else None
                row.update(speed_vs_wav2vec2=r["ratio"], speed_vs_wav2vec2_range=[r["ratio_min"], r["ratio_max"]],
                           speed_target=target, speed_pass=(r["ratio"] >= target) if target else None)
            rows.append(row)
        del built, runners
    return rows


# --------------------------------------------------------------------------- part 5
def part5_memory(p, log) -> dict:
    """Step memory of BEST-RQ, BiRQ and the lever variants at the paper's shapes (fresh process)."""
    configs = {}
    for shape_name, batch, seconds in p["paper_memory"]:
        for v in available(PAPER_SYSTEMS):
            configs[f"{shape_name}:{v}"] = dict(overrides=B.system_overrides(SHAPES[shape_name], v),
                                                batch=batch, seconds=seconds)
    if not configs:
        return {}
    log(f"  [memory] subprocess, {len(configs)} configs at the paper's shapes")
    return run_memory_worker({"configs": configs, "steps": p["paper_memory_steps"]})


def summarize_paper(throughput: list, memory: dict) -> list:
    """Part 5 rows: BiRQ (and levers) vs BEST-RQ at k = round(0.7 L): step (part 2) and memory."""
    rows = []
    for r in throughput:
        if r["model"] not in ("base", "conformer") or r["birq_over_bestrq"] is None:
            continue
        mem = memory.get(f"{r['model']}:{r['variant']}")
        ref = memory.get(f"{r['model']}:bestrq")
        mem_ratio = mem["step_peak_delta_bytes"] / ref["step_peak_delta_bytes"] if mem and ref else None
        rows.append({"model": r["model"], "variant": r["variant"], "L": r["L"], "k": r["k"],
                     "params": r["params"], "step_ratio": r["birq_over_bestrq"],
                     "step_ratio_range": r.get("birq_over_bestrq_range"), "rounds": r.get("rounds"),
                     "flop_ratio": r["flop_ratio"],
                     "step_target": r["step_target"], "step_pass": r["step_pass"],
                     "mem_step_bytes": mem["step_peak_delta_bytes"] if mem else None,
                     "bestrq_mem_step_bytes": ref["step_peak_delta_bytes"] if ref else None,
                     "mem_ratio": mem_ratio, "mem_target": 1 + r["k"] / r["L"],
                     "mem_pass": (mem_ratio <= 1 + r["k"] / r["L"]) if mem_ratio else None})
    return rows


# --------------------------------------------------------------------------- part 6
# LibriSpeech 960 h x 100 epochs on H100s at a stated fraction of the dense bf16 peak.
H100_BF16_PEAK = 989e12
MFU = 0.40
HOURS, EPOCHS = 960, 100
# Published pretraining budgets of the Base models on LibriSpeech 960 h, as the papers state them
# (recalled, not re-checked against the papers' text here): GPUs, days, updates, audio per GPU
# per update. From updates x GPUs x batch: how many epochs of 960 h those runs saw.
PUBLISHED = [
    dict(system="wav2vec 2.0 Base", measured_as="wav2vec2", gpus=64, gpu="V100", days=1.6, updates=400_000,
         batch_s_per_gpu=87.5, source="Baevski et al. 2020 (wav2vec 2.0), sec. 4.2: 64 V100s, 1.6 days, "
         "400k updates, 1.4M samples per GPU"),
    dict(system="HuBERT Base (2 iterations)", measured_as="hubert", gpus=32, gpu="GPUs", days=650_000 / 100_000 * 9.5 / 24,
         updates=650_000, batch_s_per_gpu=87.5, source="Hsu et al. 2021 (HuBERT), sec. IV-C: 32 GPUs, "
         "87.5 s per GPU, 250k + 400k steps, ~9.5 h per 100k steps (plus k-means and label dumps)"),
]


def cost_at_scale(throughput: list) -> list:
    """GPU-hours for 960 h x 100 epochs from the measured FLOPs per audio second (forward +
    backward of one pretraining step, the shapes of part 2) at MFU x the H100's bf16 peak."""
    rows = []
    for r in throughput:
        if r["model"] not in ("base", "conformer"):
            continue
        total = r["flops_per_audio_s"] * HOURS * 3600 * EPOCHS
        rows.append({"model": r["model"], "variant": r["variant"], "params": r["params"],
                     "gflop_per_audio_s": r["flops_per_audio_s"] / 1e9, "total_flops": total,
                     "h100_hours": total / (MFU * H100_BF16_PEAK) / 3600})
    return rows


def published_budgets(throughput: list) -> list:
    """The published runs next to what this model of cost says for the same amount of audio."""
    per_audio_s = {r["variant"]: r["flops_per_audio_s"] for r in throughput if r["model"] == "base"}
    rows = []
    for pub in PUBLISHED:
        audio_s = pub["updates"] * pub["gpus"] * pub["batch_s_per_gpu"]
        row = dict(pub, gpu_hours=pub["gpus"] * pub["days"] * 24, epochs=audio_s / (HOURS * 3600))
        flops = per_audio_s.get(pub["measured_as"])
        row["h100_hours_same_audio"] = flops * audio_s / (MFU * H100_BF16_PEAK) / 3600 if flops else None
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- part 4
def part4_scaling(p, log) -> dict:
    over = B.model_overrides(p.get("scale_model", B.SMALL), "birq", encoder_layers=4, enhanced_layer=2)
    model, crit, opt = B.build(over)
    timer = B.PieceTimer()
    B.instrument(model, timer)
    batch_seconds = p.get("scale_batch_seconds", 2.0)
    points = [(1, s) for s in p["scale_len"]] + [(b, batch_seconds) for b in p["scale_batch"]]
    points = list(dict.fromkeys(points))  # (batch, seconds); 1x2s is in both sweeps
    samples = {pt: B.make_sample(pt[0], pt[1]) for pt in points}
    log(f"  [scaling] {len(points)} shapes x {p['scale_rounds']} rounds (L=4, k=2, small model)")
    for pt in points:  # warm-up per shape
        B.breakdown_step(model, crit, opt, samples[pt], timer)
    per = {pt: [] for pt in points}
    for r in range(p["scale_rounds"]):
        for pt in points[r % len(points):] + points[: r % len(points)]:
            per[pt].append(B.breakdown_step(model, crit, opt, samples[pt], timer))
    rows = []
    for pt in points:
        keys = set().union(*per[pt])
        med = {k: B.median([d.get(k, 0.0) for d in per[pt]]) for k in keys}
        sweep = "+".join(name for name, ok in (("length", pt[0] == 1 and pt[1] in p["scale_len"]),
                                               ("batch", pt[1] == batch_seconds and pt[0] in p["scale_batch"])) if ok)
        rows.append({"sweep": sweep, "batch": pt[0], "seconds": pt[1], "breakdown_s": med,
                     "step_s": med["total"],
                     "frontend_plus_mask_fraction": (med.get("frontend_logmel", 0) + med.get("masking_numpy", 0))
                     / med["total"]})
    return {"model": "small L=4 k=2 (birq)", "rows": rows}


# --------------------------------------------------------------------------- output
def fmt_bytes(n):
    return f"{n / 2 ** 20:.1f}MiB"


def tables(res) -> str:
    out = []
    if res.get("load"):
        out.append(B.fmt_load(res["load"]))
        out.append("")
    if "step" in res:
        out.append("Part 1: step time and step memory vs BEST-RQ (same model & batch; "
                   f"small model D=256, batch {res['step']['batch']}x{res['step']['seconds']:g}s; "
                   f"step ratio = median [min-max] of the per-round ratios over {res['step'].get('rounds', '?')} "
                   "interleaved rounds)")
        out.append("| config | L | k | label grad | step s | BEST-RQ s | step ratio [spread] | FLOP ratio | 1+k/L | "
                   "step target | step-mem | BEST-RQ step-mem | mem ratio | pass (step/mem) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["step"]["rows"]:
            flop = f"{r['flop_ratio']:.3f}" if r.get("flop_ratio") else "-"
            out.append(f"| {r['config']} | {r['L']} | {r['k']} | {'yes' if r['label_grad'] else 'no'} | "
                       f"{r['step_s']:.3f} | {r['bestrq_step_s']:.3f} | "
                       f"{B.fmt_spread(r['step_ratio'], r.get('step_ratio_range'))} | {flop} | "
                       f"{r['irreducible']:.3f} | <= {r['step_target']:.3f} | {fmt_bytes(r['mem_step_bytes'])} | "
                       f"{fmt_bytes(r['bestrq_mem_step_bytes'])} | {r['mem_ratio']:.3f} | "
                       f"{'PASS' if r['step_pass'] else 'FAIL'}/{'PASS' if r['mem_pass'] else 'FAIL'} |")
    if "throughput" in res:
        out.append("")
        out.append("Part 2: throughput and FLOP rate (FLOPs of one step / step time, vs this process's "
                   "fp32 2048^3 torch.mm rate); same audio for every system of a model shape, interleaved; "
                   "ratios and fractions = median [min-max] over the shape's rounds")
        out.append("| model | variant | params | batch | rounds | step s | audio s/s | GFLOP/step | GFLOP/s | "
                   "mm GFLOP/s | "
                   "fraction of mm [spread] | BiRQ/BEST-RQ step [spread] (FLOPs) vs target | "
                   "speed vs wav2vec 2.0 [spread] (target) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["throughput"]:
            spread = r.get("mm_fraction_range")
            frac = B.fmt_spread(100 * r["mm_fraction"], [100 * x for x in spread] if spread else None, 1) + "%"
            if r["pass"] is not None:
                frac += " PASS" if r["pass"] else " FAIL (target 25%)"
            ratio = ""
            if r["birq_over_bestrq"]:
                tau = f", tau={r['gumbel_temp'][0]:g}" if r.get("gumbel_temp") else ""
                ratio = (f"{B.fmt_spread(r['birq_over_bestrq'], r.get('birq_over_bestrq_range'))} "
                         f"({r['flop_ratio']:.3f}) vs <= {r['step_target']:.3f} "
                         f"(k={r['k']}/L={r['L']}{tau}) {'PASS' if r['step_pass'] else 'FAIL'}")
            speed = ""
            if r.get("speed_vs_wav2vec2") is not None:
                speed = B.fmt_spread(r["speed_vs_wav2vec2"], r.get("speed_vs_wav2vec2_range"), 2) + "x"
                if r.get("speed_target"):
                    speed += f" (>= {r['speed_target']:g}x) {'PASS' if r['speed_pass'] else 'FAIL'}"
            out.append(f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['batch']}x{r['seconds']:g}s | "
                       f"{r.get('rounds', '-')} | {r['step_s']:.2f} | {r['audio_s_per_s']:.2f} | "
                       f"{r['step_flops'] / 1e9:.1f} | {r['flop_rate'] / 1e9:.2f} | {r['matmul_rate'] / 1e9:.1f} | "
                       f"{frac} | {ratio} | {speed} |")
    if "labels" in res:
        lab = res["labels"]
        out.append("")
        out.append(f"Part 3: label cost end to end ({lab['corpus']}, {sum(lab['utterances'].values())} utts, "
                   f"{lab['audio_seconds']:.0f}s audio; HuBERT 2 x {lab['updates_per_hubert_iteration']} updates "
                   f"vs BiRQ {lab['birq_updates']} updates)")
        out.append("| stage | wall s | disk |")
        out.append("|---|---|---|")
        for k, v in lab["stage_seconds"].items():
            disk = lab["disk_bytes"].get(k) if k in lab["disk_bytes"] else None
            out.append(f"| {k} | {v:.1f} | {fmt_bytes(disk) if disk is not None else ''} |")
        out.append(f"| **HuBERT pipeline total** | {lab['hubert_total_seconds']:.1f} | "
                   f"{fmt_bytes(lab['hubert_disk_bytes'])} |")
        out.append(f"| **BiRQ total** | {lab['birq_total_seconds']:.1f} | 0 (labels on the fly) |")
        out.append(f"| **BiRQ / HuBERT** | {lab['ratio_birq_to_hubert']:.3f} "
                   f"{'PASS' if lab['ratio_birq_to_hubert'] <= 0.6 else 'FAIL'} (target <= 0.6; one run of "
                   "each, one after the other: no spread) | |")
    if "scaling" in res:
        out.append("")
        out.append(f"Part 4: scaling and where the step goes ({res['scaling']['model']}; seconds, median)")
        pieces = ["frontend_logmel", "masking_numpy", "conv_subsampling", "anchor_quantizer", "extra_k_layer_pass",
                  "enhanced_quantizer+gumbel", "main_encoder", "heads", "other_forward+loss", "backward", "optimizer"]
        out.append("| sweep | batch x len | step s | " + " | ".join(pieces) + " | front-end+mask % |")
        out.append("|---|---|---|" + "---|" * len(pieces) + "---|")
        for r in res["scaling"]["rows"]:
            b = r["breakdown_s"]
            out.append(f"| {r['sweep']} | {r['batch']}x{r['seconds']:g}s | {r['step_s']:.3f} | "
                       + " | ".join(f"{b.get(k, 0):.3f}" for k in pieces)
                       + f" | {100 * r['frontend_plus_mask_fraction']:.1f}% |")
    if res.get("paper"):
        out.append("")
        out.append("Part 5: the paper's settings, k = round(0.7 L): BiRQ (and the label-generator levers) vs "
                   "BEST-RQ, same model shape and batch (step: part 2's interleaved rounds; memory: one step's "
                   "peak RSS above the RSS before it, fresh process)")
        out.append("| model | variant | L | k | params | step ratio [spread] | FLOP ratio | step target | mem ratio | "
                   "mem target | step-mem | BEST-RQ step-mem | pass (step/mem) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["paper"]:
            mem = f"{r['mem_ratio']:.3f}" if r["mem_ratio"] else "-"
            mem_pass = "-" if r["mem_pass"] is None else ("PASS" if r["mem_pass"] else "FAIL")
            out.append(f"| {r['model']} | {r['variant']} | {r['L']} | {r['k']} | {r['params'] / 1e6:.1f}M | "
                       f"{B.fmt_spread(r['step_ratio'], r.get('step_ratio_range'))} | {r['flop_ratio']:.3f} | "
                       f"<= {r['step_target']:.3f} | {mem} | "
                       f"<= {r['mem_target']:.3f} | {fmt_bytes(r['mem_step_bytes']) if r['mem_step_bytes'] else '-'} | "
                       f"{fmt_bytes(r['bestrq_mem_step_bytes']) if r['bestrq_mem_step_bytes'] else '-'} | "
                       f"{'PASS' if r['step_pass'] else 'FAIL'}/{mem_pass} |")
    if res.get("cost", {}).get("rows"):
        c = res["cost"]
        out.append("")
        out.append(f"Part 6: cost at scale, from the measured FLOPs per audio second (part 2): LibriSpeech "
                   f"{c['hours']} h x {c['epochs']} epochs on H100s at {100 * c['mfu']:.0f}% of the dense bf16 peak "
                   f"({c['h100_bf16_peak'] / 1e12:.0f} TFLOP/s)")
        out.append("| model | system | params | GFLOP per audio s (fwd+bwd) | total FLOPs | H100-hours |")
        out.append("|---|---|---|---|---|---|")
        for r in c["rows"]:
            out.append(f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['gflop_per_audio_s']:.1f} | "
                       f"{r['total_flops']:.2e} | {r['h100_hours']:.0f} |")
        out.append("")
        out.append("Published Base budgets (LibriSpeech 960 h) and this cost model for the same audio")
        out.append("| run | GPUs x days | GPU-hours | updates | epochs of 960 h seen | H100-hours for that audio "
                   f"at {100 * c['mfu']:.0f}% (measured FLOPs/audio s) | source |")
        out.append("|---|---|---|---|---|---|---|")
        for pub in c["published"]:
            same = f"{pub['h100_hours_same_audio']:.0f}" if pub.get("h100_hours_same_audio") else "-"
            out.append(f"| {pub['system']} | {pub['gpus']} {pub['gpu']} x {pub['days']:.1f} | {pub['gpu_hours']:.0f} | "
                       f"{pub['updates']:,} | {pub['epochs']:.0f} | {same} | {pub['source']} |")
    if "update_paths" in res:
        import fairseq_update
        out.append("")
        out.append(fairseq_update.table(res["update_paths"]))
    return "\n".join(out)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    if "step" in res:
        ax = axes[0][0]
        rows = res["step"]["rows"]
        for grad, marker in ((True, "o"), (False, "s")):
            sel = [r for r in rows if r["label_grad"] == grad]
            if sel:
                ax.scatter([r["k"] / r["L"] for r in sel], [r["step_ratio"] for r in sel], marker=marker,
                           label=f"step, {'BiRQ' if grad else 'BiRQ no label grad'}")
                ranged = [r for r in sel if r.get("step_ratio_range")]
                if ranged:  # min-max of the per-round ratios
                    ax.errorbar([r["k"] / r["L"] for r in ranged], [r["step_ratio"] for r in ranged],
                                yerr=[[r["step_ratio"] - r["step_ratio_range"][0] for r in ranged],
                                      [r["step_ratio_range"][1] - r["step_ratio"] for r in ranged]],
                                fmt="none", ecolor="0.5", elinewidth=0.8, capsize=2)
                ax.scatter([r["k"] / r["L"] for r in sel], [r["mem_ratio"] for r in sel], marker=marker,
                           facecolors="none", edgecolors="C3",
                           label=f"memory, {'BiRQ' if grad else 'BiRQ no label grad'}")
        xs = [0, 1]
        ax.plot(xs, [1 + x for x in xs], "k-", label="1 + k/L")
        ax.plot(xs, [1 + x + STEP_SLACK for x in xs], "k--", label="step target 1 + k/L + 0.05")
        ax.set_xlabel("k / L")
        ax.set_ylabel("ratio to BEST-RQ")
        ax.set_title("Part 1: cost of the enhanced stream (bars: min-max over rounds)"
                     + (" [UNDER LOAD]" if res.get("load", {}).get("under_load") else ""))
        ax.legend(fontsize=7)
    if "throughput" in res:
        ax = axes[0][1]
        rows = res["throughput"]
        labels = [f"{r['model']}\n{r['variant']}" for r in rows]
        ax.bar(labels, [100 * r["mm_fraction"] for r in rows])
        ax.axhline(25, color="k", ls="--", label="target 25% (base)")
        for i, r in enumerate(rows):
            ax.text(i, 100 * r["mm_fraction"], f"{r['audio_s_per_s']:.1f} audio s/s", ha="center", va="bottom",
                    fontsize=7)
        ax.set_ylabel("% of fp32 torch.mm FLOP rate")
        ax.set_title("Part 2: achieved FLOP rate")
        ax.legend(fontsize=7)
    if "labels" in res:
        ax = axes[1][0]
        lab = res["labels"]["stage_seconds"]
        bottom = 0
        for i, (k, v) in enumerate(lab.items()):
            if k.startswith("hubert"):
                ax.bar(["HuBERT 2 iterations"], [v], bottom=bottom, label=k, color=plt.cm.tab20(i))
                bottom += v
        ax.bar(["BiRQ 1 run"], [lab["birq_train"]], label="birq_train", color="k")
        ax.set_ylabel("wall seconds")
        ax.set_title(f"Part 3: label cost end to end (BiRQ/HuBERT = {res['labels']['ratio_birq_to_hubert']:.2f})")
        ax.legend(fontsize=6)
    if "scaling" in res:
        ax = axes[1][1]
        rows = res["scaling"]["rows"]
        pieces = ["frontend_logmel", "masking_numpy", "conv_subsampling", "anchor_quantizer",
                  "enhanced_quantizer+gumbel", "extra_k_layer_pass", "main_encoder", "heads",
                  "other_forward+loss", "backward", "optimizer"]
        names = [f"{r['batch']}x{r['seconds']:g}s" for r in rows]
        bottom = [0.0] * len(rows)
        for i, piece in enumerate(pieces):
            vals = [r["breakdown_s"].get(piece, 0.0) for r in rows]
            ax.bar(names, vals, bottom=bottom, label=piece, color=plt.cm.tab20(i))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel("seconds per step")
        ax.set_title("Part 4: step breakdown vs batch x length")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~1-2 minute smoke run (few rounds: its ratios are noisy, not for conclusions)")
    ap.add_argument("--data", help="manifest dir (train.tsv, valid.tsv) for part 3; default: synthetic audio")
    ap.add_argument("--parts", default="1,2,3,4,5,7", help="comma-separated subset of parts to run "
                    "(5 = memory at the paper's shapes; its step ratios come from part 2; 7 = the tiny "
                    "fairseq update, old vs new path)")
    ap.add_argument("--out", default=RESULTS, help="results directory")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for every measurement and OMP_NUM_THREADS of the fairseq runs "
                         "(default 1: on a shared 2-core box 2 threads spin against other load and are 5-50x "
                         "slower and very noisy; 0 = torch default)")
    ap.add_argument("--keep-work", action="store_true", help="keep part 3's work dir")
    ap.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return

    parts = {int(x) for x in args.parts.split(",") if x}
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by part 3's fairseq runs
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    p = plan(args.quick)
    t0 = time.perf_counter()
    loads = [B.load_sample("start", 0.0)]

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    def part_start(name, msg):  # a load sample at every part's start (see bench_lib.load_verdict)
        loads.append(B.load_sample(f"before {name}", time.perf_counter() - t0))
        log(msg)

    res = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "examples/benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "loadavg_start": loads[0]["loadavg"]},
    }
    if 1 in parts:
        part_start("part 1", "part 1: step time / memory ratios")
        step = part1_step(p, log)
        memory = part1_memory(p, log)
        step["rows"] = summarize_part1(step, memory, p)
        step["memory"] = memory
        res["step"] = step
    if 2 in parts:
        part_start("part 2", "part 2: throughput and FLOP rate, against fairseq's wav2vec 2.0 and HuBERT, "
                   "at the paper's shapes")
        res["throughput"] = part2_throughput(p, log)
        res["cost"] = {"rows": cost_at_scale(res["throughput"]), "mfu": MFU, "h100_bf16_peak": H100_BF16_PEAK,
                       "hours": HOURS, "epochs": EPOCHS, "published": published_budgets(res["throughput"])}
    if 5 in parts:
        part_start("part 5", "part 5: step memory at the paper's settings (k = round(0.7 L))")
        res["paper_memory"] = part5_memory(p, log)
        if "throughput" in res:
            res["paper"] = summarize_paper(res["throughput"], res["paper_memory"])
    if 3 in parts:
        part_start("part 3", "part 3: label pipeline, HuBERT 2 iterations vs BiRQ")
        from label_pipeline import cleanup, run_label_pipeline
        work = tempfile.mkdtemp(prefix="birq_bench_labels_")
        try:
            res["labels"] = run_label_pipeline(work, args.data, updates=p["label_updates"],
                                               train_utts=p["label_utts"], log=log)
        finally:
            if not args.keep_work:
                cleanup(work)
    if 4 in parts:
        part_start("part 4", "part 4: scaling")
        res["scaling"] = part4_scaling(p, log)
    if 7 in parts:
        part_start("part 7", "part 7: tiny fairseq update, old vs new path (issue #17)")
        import fairseq_update
        from label_pipeline import cleanup, prepare_corpus
        work = tempfile.mkdtemp(prefix="birq_bench_update_")
        try:
            corpus, source = prepare_corpus(work, args.data, train_utts=p["label_utts"])
            res["update_paths"] = {"corpus": source, "rows": fairseq_update.compare(
                corpus, rounds=p["update_rounds"], log=log)}
        finally:
            cleanup(work)
    loads.append(B.load_sample("end", time.perf_counter() - t0))
    res["machine"]["loadavg_end"] = loads[-1]["loadavg"]
    res["load"] = B.load_verdict(loads, cpus=os.cpu_count() or 1, threads=torch.get_num_threads())
    res["under_load"] = res["load"]["under_load"]
    res["wall_seconds"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "latest.json")
    png_path = os.path.join(args.out, "latest.png")
    B.dump_json(json_path, res)
    plot(res, png_path)
    print()
    print(tables(res))
    print(f"\nwrote {json_path} and {png_path} in {res['wall_seconds']:.0f} s "
          f"(load average {res['machine']['loadavg_start'][0]:.1f} -> {res['machine']['loadavg_end'][0]:.1f}"
          f"{': UNDER LOAD' if res['under_load'] else ''})")
    return res


if __name__ == "__main__":
    main()
