#!/usr/bin/env python
"""BiRQ benchmark harness (issue #5). One command:

    .venv/bin/python examples/benchmarks/run.py [--quick] [--data MANIFEST_DIR] [--parts 1,2,3,4]

Prints a table, writes examples/benchmarks/results/latest.json and latest.png.

1. step time and step memory: BiRQ (layer k of L) and BiRQ without label gradient vs
   BEST-RQ, same model and batch, interleaved rounds, median of per-round ratios; memory
   = peak RSS of one step above the RSS before it, in a separate process (see
   bench_lib.measure_step_memory).
2. throughput (audio s / s) and FLOP rate (FlopCounterMode over one step) as a fraction of
   the same process's dense fp32 torch.mm rate, tiny and base-shaped (12x768) models.
3. label cost: fairseq's HuBERT two-iteration pipeline vs one BiRQ run (label_pipeline.py).
4. scaling of the step with utterance length and batch size, with a per-piece breakdown.
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
STEP_SLACK = 0.05


def plan(quick: bool) -> dict:
    if quick:
        return dict(quick=True,
            ratio_grid=[(4, 2)], nograd_k={4: 2}, ratio_batch=(2, 2.0), ratio_rounds=3,
            tput=[("tiny", B.TINY, 2, 4.0, 3), ("base", B.BASE, 1, 2.0, 1)],
            label_updates=3, label_utts=8, scale_len=[2.0, 4.0], scale_batch=[1, 2], scale_rounds=2,
        )
    return dict(
        quick=False, ratio_grid=[(4, 1), (4, 2), (4, 3), (8, 1), (8, 4), (8, 7)], nograd_k={4: 2, 8: 4},
        ratio_batch=(4, 4.0), ratio_rounds=21,
        tput=[("tiny", B.TINY, 2, 8.0, 5), ("base", B.BASE, 2, 8.0, 3)],
        label_updates=50, label_utts=96, scale_len=[2.0, 4.0, 8.0, 16.0], scale_batch=[1, 2, 4, 8],
        scale_rounds=5,
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


def part1_memory(p, log) -> dict:
    """All configs in one fresh process whose malloc returns big blocks to the OS."""
    batch, seconds = p["ratio_batch"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    log(f"  [memory] subprocess, {len(ratio_configs(p))} configs")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-worker",
                          json.dumps({"quick": p["quick"], "threads": torch.get_num_threads(),
                                      "batch": batch, "seconds": seconds})],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("memory worker failed:\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_worker(arg: str) -> None:
    args = json.loads(arg)
    torch.set_num_threads(args["threads"])
    p = plan(args["quick"])
    result = {}
    for name, (_, _, over) in ratio_configs(p).items():
        result[name] = B.measure_step_memory(over, args["batch"], args["seconds"])
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
            "step_s": B.median(step["times"][name]), "bestrq_step_s": B.median(step["times"][ref]),
            "step_ratio": r["ratio"], "step_ratio_range": [r["ratio_min"], r["ratio_max"]],
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
    rows = []
    for name, base, batch, seconds, rounds in p["tput"]:
        sample = B.make_sample(batch, seconds)
        built = {v: B.build(B.model_overrides(base, v)) for v in ("bestrq", "birq")}
        flops = {}
        # The warm-up step of each variant is the FLOP-counted step.
        for v, (m, c, o) in built.items():
            flops[v] = B.count_step_flops(m, c, o, sample, seed=0)
        runners = {v: (lambda mco=mco: B.train_step(*mco, sample)) for v, mco in built.items()}
        mm_rates = []
        mm_n = p.get("mm_n", 2048)
        runners["matmul"] = lambda: mm_rates.append(B.matmul_rate(n=mm_n, reps=3))
        log(f"  [throughput] {name}: {batch}x{seconds:g}s, {rounds} rounds")
        times = B.interleaved(runners, rounds=rounds, warmup=0)
        times.pop("matmul")
        mm_rate = B.median(mm_rates)  # per round: best of 3 torch.mm; median over rounds
        L, k = base["encoder_layers"], base["enhanced_layer"]
        time_ratio = B.ratio_stats(times, "birq", "bestrq")["ratio"]
        for v in ("bestrq", "birq"):
            step = B.median(times[v])
            rows.append({
                "model": name, "variant": v, "batch": batch, "seconds": seconds,
                "params": sum(x.numel() for x in built[v][0].parameters()),
                "step_s": step, "audio_s_per_s": batch * seconds / step,
                "step_flops": flops[v], "flop_rate": flops[v] / step, "matmul_rate": mm_rate,
                "mm_fraction": flops[v] / step / mm_rate,
                "target_mm_fraction": 0.25 if name == "base" else None,
                "pass": (flops[v] / step / mm_rate >= 0.25) if name == "base" else None,
                "birq_over_bestrq": time_ratio if v == "birq" else None,
                "flop_ratio": flops["birq"] / flops["bestrq"] if v == "birq" else None,
                "L": L, "k": k, "step_target": 1 + k / L + STEP_SLACK,
                "step_pass": (time_ratio <= 1 + k / L + STEP_SLACK) if v == "birq" else None,
            })
        del built, runners
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
    if "step" in res:
        out.append("Part 1: step time and step memory vs BEST-RQ (same model & batch; "
                   f"small model D=256, batch {res['step']['batch']}x{res['step']['seconds']:g}s; "
                   "median of per-round ratios)")
        out.append("| config | L | k | label grad | step s | BEST-RQ s | step ratio | FLOP ratio | 1+k/L | step target | "
                   "step-mem | BEST-RQ step-mem | mem ratio | pass (step/mem) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["step"]["rows"]:
            flop = f"{r['flop_ratio']:.3f}" if r.get("flop_ratio") else "-"
            out.append(f"| {r['config']} | {r['L']} | {r['k']} | {'yes' if r['label_grad'] else 'no'} | "
                       f"{r['step_s']:.3f} | {r['bestrq_step_s']:.3f} | {r['step_ratio']:.3f} | {flop} | "
                       f"{r['irreducible']:.3f} | <= {r['step_target']:.3f} | {fmt_bytes(r['mem_step_bytes'])} | "
                       f"{fmt_bytes(r['bestrq_mem_step_bytes'])} | {r['mem_ratio']:.3f} | "
                       f"{'PASS' if r['step_pass'] else 'FAIL'}/{'PASS' if r['mem_pass'] else 'FAIL'} |")
    if "throughput" in res:
        out.append("")
        out.append("Part 2: throughput and FLOP rate (FLOPs of one step / step time, vs this process's "
                   "fp32 2048^3 torch.mm rate)")
        out.append("| model | variant | params | batch | step s | audio s/s | GFLOP/step | GFLOP/s | mm GFLOP/s | "
                   "fraction of mm | BiRQ/BEST-RQ step (FLOPs) vs target |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["throughput"]:
            frac = f"{100 * r['mm_fraction']:.1f}%"
            if r["pass"] is not None:
                frac += " PASS" if r["pass"] else " FAIL (target 25%)"
            ratio = ""
            if r["birq_over_bestrq"]:
                ratio = (f"{r['birq_over_bestrq']:.3f} ({r['flop_ratio']:.3f}) vs <= {r['step_target']:.3f} "
                         f"(k={r['k']}/L={r['L']}) {'PASS' if r['step_pass'] else 'FAIL'}")
            out.append(f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['batch']}x{r['seconds']:g}s | "
                       f"{r['step_s']:.2f} | {r['audio_s_per_s']:.2f} | {r['step_flops'] / 1e9:.1f} | "
                       f"{r['flop_rate'] / 1e9:.2f} | {r['matmul_rate'] / 1e9:.1f} | {frac} | {ratio} |")
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
                   f"{'PASS' if lab['ratio_birq_to_hubert'] <= 0.6 else 'FAIL'} (target <= 0.6) | |")
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
                ax.scatter([r["k"] / r["L"] for r in sel], [r["mem_ratio"] for r in sel], marker=marker,
                           facecolors="none", edgecolors="C3",
                           label=f"memory, {'BiRQ' if grad else 'BiRQ no label grad'}")
        xs = [0, 1]
        ax.plot(xs, [1 + x for x in xs], "k-", label="1 + k/L")
        ax.plot(xs, [1 + x + STEP_SLACK for x in xs], "k--", label="step target 1 + k/L + 0.05")
        ax.set_xlabel("k / L")
        ax.set_ylabel("ratio to BEST-RQ")
        ax.set_title("Part 1: cost of the enhanced stream")
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
    ap.add_argument("--parts", default="1,2,3,4", help="comma-separated subset of parts to run")
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

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    res = {
        "schema": "birq-bench/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "examples/benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
    }
    if 1 in parts:
        log("part 1: step time / memory ratios")
        step = part1_step(p, log)
        memory = part1_memory(p, log)
        step["rows"] = summarize_part1(step, memory, p)
        step["memory"] = memory
        res["step"] = step
    if 2 in parts:
        log("part 2: throughput and FLOP rate")
        res["throughput"] = part2_throughput(p, log)
    if 3 in parts:
        log("part 3: label pipeline, HuBERT 2 iterations vs BiRQ")
        from label_pipeline import cleanup, run_label_pipeline
        work = tempfile.mkdtemp(prefix="birq_bench_labels_")
        try:
            res["labels"] = run_label_pipeline(work, args.data, updates=p["label_updates"],
                                               train_utts=p["label_utts"], log=log)
        finally:
            if not args.keep_work:
                cleanup(work)
    if 4 in parts:
        log("part 4: scaling")
        res["scaling"] = part4_scaling(p, log)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["wall_seconds"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "latest.json")
    png_path = os.path.join(args.out, "latest.png")
    B.dump_json(json_path, res)
    plot(res, png_path)
    print()
    print(tables(res))
    print(f"\nwrote {json_path} and {png_path} in {res['wall_seconds']:.0f} s "
          f"(load average {res['machine']['loadavg_start'][0]:.1f} -> {res['machine']['loadavg_end'][0]:.1f})")
    return res


if __name__ == "__main__":
    main()
