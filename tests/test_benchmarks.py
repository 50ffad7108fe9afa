"""Structure of the benchmark harness (examples/benchmarks): tiny models, 1-2 steps.

No timing thresholds: only that measurements are made, ratios come from the measured
times, FLOP counts are positive and reproducible, and the JSON / table / plot get built.
The benchmark's model shapes are checked against the recipes (examples/pretrain/*.yaml) read
independently here, and the ratio / load aggregation against synthetic timings.
"""

import dataclasses
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples", "benchmarks"))

import bench_lib as B  # noqa: E402
import gpu_check as G  # noqa: E402
import label_pipeline as LP  # noqa: E402
import run as R  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from birq_fairseq.models.birq import BirqConfig  # noqa: E402

PRETRAIN_DIR = os.path.join(REPO, "examples", "pretrain")

TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
            conv_channels=8, conv_pos=8, conv_pos_groups=2, anchor_codebook_size=64,
            enhanced_codebook_size=64, enhanced_layer=1, mask_length=3, mask_prob=0.4,
            dropout=0.0, attention_dropout=0.0)

PLAN = dict(quick=True, ratio_model=TINY, ratio_grid=[(2, 1)], nograd_k={2: 1}, ratio_batch=(1, 1.0),
            ratio_rounds=2, tput=[("tiny", TINY, 1, 1.0, 1, ["bestrq", "birq"])], mm_n=256,
            scale_model=dict(TINY, encoder_layers=4),
            scale_len=[0.5, 1.0], scale_batch=[1, 2], scale_batch_seconds=1.0, scale_rounds=1)
# fairseq's wav2vec 2.0 / HuBERT shrunk to test size (the benchmark runs their base recipes).
TINY_BASELINE = dict(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                     conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", final_dim=16,
                     conv_pos=8, conv_pos_groups=2)
BASELINES = {"wav2vec2": dict(TINY_BASELINE, latent_vars=8), "hubert": TINY_BASELINE}


@pytest.fixture(scope="module")
def part1():
    return R.part1_step(PLAN, log=lambda *_: None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # module scope: set before the module-scoped part1 fixture runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ratio_stats_uses_measured_times():
    times = {"a": [2.0, 4.0, 3.0], "ref": [1.0, 2.0, 2.0]}
    r = B.ratio_stats(times, "a", "ref")
    assert r["ratio"] == pytest.approx(2.0)  # median of 2, 2, 1.5
    assert r["ratio_of_medians"] == pytest.approx(3.0 / 2.0)
    assert (r["ratio_min"], r["ratio_max"], r["rounds"]) == (1.5, 2.0, 3)
    with pytest.raises(ValueError):  # per-round ratios need the rounds of both sides
        B.ratio_stats({"a": [1.0, 2.0], "ref": [1.0]}, "a", "ref")


# --------------------------------------------------------------------------- the recipes' shapes
def yaml_model(recipe, **changes):
    """A recipe's model as BirqConfig kwargs, read here without the benchmark's loader: every field's
    dataclass default, then the YAML's ``model:`` values, then ``changes``."""
    out = {}
    for f in dataclasses.fields(BirqConfig):
        if f.name == "_name" or f.name == "fp16":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = list(default) if isinstance(default, tuple) else default
    section = OmegaConf.to_container(OmegaConf.load(os.path.join(PRETRAIN_DIR, f"{recipe}.yaml")).model)
    section.pop("_name")
    assert set(section) <= set(out), f"{recipe}: fields BirqConfig lacks: {set(section) - set(out)}"
    out.update(section)
    out.update(changes)
    return out


def differences(bench, recipe):
    return {k: (recipe.get(k, "<absent>"), bench.get(k, "<absent>"))
            for k in set(bench) | set(recipe) if k != "fp16" and bench.get(k, "<absent>") != recipe.get(k, "<absent>")}


@pytest.mark.parametrize("shape", ["tiny", "base", "conformer"])
def test_benchmark_shapes_are_the_recipes(shape):
    """Fails when a recipe and the benchmark's shape disagree beyond the stated benchmark changes."""
    recipe, changes = B.SHAPE_RECIPES[shape]
    assert B.SHAPES[shape] == R.SHAPES[shape]
    assert differences(B.SHAPES[shape], yaml_model(recipe, **changes)) == {}
    assert B.SHAPES[shape]["fp16"] is False  # BENCH_CHANGES: fp32 on the CPU
    assert set(changes) <= {"encoder_layerdrop"}, "a new benchmark change: say why in bench_lib.SHAPE_RECIPES"


@pytest.mark.parametrize("shape, layers, k", [("tiny", 4, 3), ("base", 12, 8), ("conformer", 10, 7)])
def test_benchmark_shapes_run_the_papers_k_and_tau(shape, layers, k):
    over = B.system_overrides(B.SHAPES[shape], "birq")
    assert over["encoder_layers"] == layers and B.enhanced_layer(over) == k  # round(0.7 L)
    assert tuple(over["gumbel_temp"]) == (0.5, 0.5, 1.0)  # tau = 0.5 held fixed


@pytest.mark.parametrize("shape", sorted(B.BESTRQ_RECIPES))
def test_bestrq_rows_are_the_bestrq_recipes(shape):
    _, changes = B.SHAPE_RECIPES[shape]
    bench = B.system_overrides(B.SHAPES[shape], "bestrq")
    assert differences(bench, yaml_model(B.BESTRQ_RECIPES[shape], **changes)) == {}


def test_every_plan_and_the_gpu_check_use_the_recipe_shapes():
    for quick in (True, False):
        p = R.plan(quick)
        for name, shape, *_ in p["tput"]:
            assert shape is B.SHAPES[name], name
        assert {name for name, *_ in p["paper_memory"]} <= set(B.SHAPES)
    assert G.plan(True)["birq"] is B.SHAPES["tiny"] and G.plan(False)["birq"] is B.SHAPES["base"]


def test_one_build_system_and_no_imports_from_tests():
    sources = {name: open(os.path.join(REPO, "examples", "benchmarks", name)).read()
               for name in ("gpu_check.py", "run.py", "label_pipeline.py")}
    for name, source in sources.items():
        assert '"tests"' not in source and "audio_fixtures" not in source, name
        assert "def build_system" not in source, name  # bench_lib.build_system is the one
    assert "TINY_BIRQ" not in sources["gpu_check.py"]


def test_tiny_rows_report_the_recipes_k_and_tau():
    plan = dict(PLAN, tput=[("tiny", B.SHAPES["tiny"], 1, 0.5, 2, ["bestrq", "birq"])])
    rows = {r["variant"]: r for r in R.part2_throughput(plan, log=lambda *_: None)}
    birq = rows["birq"]
    assert (birq["recipe"], birq["L"], birq["k"], birq["gumbel_temp"]) == ("tiny_birq", 4, 3, [0.5, 0.5, 1.0])
    assert birq["step_target"] == pytest.approx(1 + 3 / 4 + R.STEP_SLACK) and birq["rounds"] == 2
    lo, hi = birq["birq_over_bestrq_range"]
    assert lo <= birq["birq_over_bestrq"] <= hi
    lo, hi = birq["mm_fraction_range"]
    assert 0 < lo <= hi
    assert rows["bestrq"]["gumbel_temp"] is None and rows["bestrq"]["birq_over_bestrq_range"] is None


# --------------------------------------------------------------------------- ratios with their noise
def fake_interleaved(monkeypatch, costs, load):
    """interleaved() over runners whose 'time' is cost x the load of the round they run in."""
    calls = []

    def runner(name):
        def run():
            calls.append(name)
            return costs[name] * load[(len(calls) - 1) // len(costs)]
        return run

    monkeypatch.setattr(B, "timed", lambda fn: fn())
    times = B.interleaved({name: runner(name) for name in costs}, rounds=len(load), warmup=0)
    return times, calls


def test_interleaved_rounds_cancel_load_drift(monkeypatch):
    """Load that changes from round to round hits both sides of a round: the per-round ratios are the
    true ratio, while the ratio of medians is off and would be the only figure without rounds."""
    load = [1.0, 3.0, 1.2, 2.5, 1.1]
    times, calls = fake_interleaved(monkeypatch, {"birq": 1.5, "bestrq": 1.0}, load)
    assert calls == ["birq", "bestrq", "bestrq", "birq"] * 2 + ["birq", "bestrq"]  # A B, B A, ...
    r = B.ratio_stats(times, "birq", "bestrq")
    assert r["ratio"] == pytest.approx(1.5) and r["ratio_min"] == pytest.approx(1.5)
    assert r["ratio_max"] == pytest.approx(1.5) and r["rounds"] == 5


def test_spread_is_min_max_of_per_round_ratios():
    # round 3 was disturbed on one side only: the median holds, the spread shows it
    times = {"birq": [1.5, 1.5, 3.0, 1.6, 1.4], "bestrq": [1.0, 1.0, 1.0, 1.0, 1.0]}
    r = B.ratio_stats(times, "birq", "bestrq")
    assert r["ratio"] == pytest.approx(1.5) and (r["ratio_min"], r["ratio_max"]) == pytest.approx((1.4, 3.0))
    assert B.fmt_spread(r["ratio"], [r["ratio_min"], r["ratio_max"]]) == "1.500 [1.400-3.000]"
    assert B.fmt_spread(2.0, None, 2) == "2.00" and B.fmt_spread(None, [1, 2]) == "-"


def test_part1_rows_carry_the_spread_of_synthetic_rounds():
    times = {"bestrq_L2": [1.0, 2.0, 1.0], "birq_L2_k1": [1.5, 2.6, 1.6], "birq_nograd_L2_k1": [1.2, 2.4, 1.1]}
    memory = {name: {"step_peak_delta_bytes": 100} for name in times}
    rows = {r["config"]: r for r in R.summarize_part1({"times": times}, memory, PLAN)}
    r = rows["birq_L2_k1"]
    assert r["step_ratio"] == pytest.approx(1.5) and r["step_ratio_range"] == pytest.approx([1.3, 1.6])
    assert r["rounds"] == 3
    assert rows["birq_nograd_L2_k1"]["step_ratio_range"] == pytest.approx([1.1, 1.2])


def test_paper_rows_keep_part2s_spread():
    row = {"model": "base", "variant": "birq", "L": 12, "k": 8, "params": 1, "birq_over_bestrq": 1.5,
           "birq_over_bestrq_range": [1.4, 1.7], "rounds": 3, "flop_ratio": 1.6, "step_target": 1.717,
           "step_pass": True}
    paper = R.summarize_paper([row], {})
    assert paper[0]["step_ratio"] == 1.5 and paper[0]["step_ratio_range"] == [1.4, 1.7]
    assert "1.500 [1.400-1.700]" in R.tables({"paper": paper})


def samples(*points):
    return [B.load_sample(at, elapsed, [load, load, load]) for at, elapsed, load in points]


def test_load_marking_rule():
    # issue 17's two runs on 2 CPUs with 1 benchmark thread: idle 0.9 -> 1.0 over 484 s; loaded up to 2.7
    idle = B.load_verdict(samples(("start", 0, 0.9), ("end", 484, 1.0)), cpus=2, threads=1)
    assert idle["threshold"] == 1.0 and not idle["under_load"]
    assert idle["max_other_load"] == pytest.approx(0.9)  # at the end ~all of 1.0 is the benchmark's own
    loaded = B.load_verdict(samples(("start", 0, 0.9), ("before part 2", 200, 2.7), ("end", 484, 1.4)),
                            cpus=2, threads=1)
    assert loaded["under_load"]
    own = 1 - math.exp(-200 / 60)
    assert loaded["max_other_load"] == pytest.approx(2.7 - own)
    assert [s["at"] for s in loaded["samples"]] == ["start", "before part 2", "end"]
    # at the start none of the load is the benchmark's: 1.2 on 2 CPUs is another busy thread and more
    assert B.load_verdict(samples(("start", 0, 1.2)), cpus=2, threads=1)["under_load"]
    # the same load on 16 CPUs is idle
    assert not B.load_verdict(samples(("start", 0, 6.0), ("end", 600, 7.0)), cpus=16, threads=1)["under_load"]
    assert "UNDER LOAD" in B.fmt_load(loaded) and "UNDER LOAD" not in B.fmt_load(idle)


def test_run_records_the_load_in_json_and_table(tmp_path, monkeypatch, capsys):
    """main() with no parts: the load samples, the verdict, the schema; a load pinned high marks the run."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # main() sets it: restore
    monkeypatch.setattr(B.os, "getloadavg", lambda: (50.0, 40.0, 30.0))
    res = R.main(["--parts", "", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["schema"] == "birq-bench/3" and saved["under_load"] is True
    assert [s["at"] for s in saved["load"]["samples"]] == ["start", "end"]
    assert saved["load"]["bench_threads"] == 1 and saved["load"]["cpus"] == os.cpu_count()
    assert saved["machine"]["loadavg_start"] == [50.0, 40.0, 30.0] and res["load"]["under_load"]
    out = capsys.readouterr().out
    assert "Machine load: UNDER LOAD" in out and ": UNDER LOAD)" in out


def test_interleaved_runs_every_runner_every_round():
    calls = []
    times = B.interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, rounds=3, warmup=1)
    assert calls == ["x", "y", "x", "y", "y", "x", "x", "y"]  # warm-up, then rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"x": 3, "y": 3}


def test_flop_count_positive_and_reproducible():
    sample = B.make_sample(1, 1.0)
    counts = []
    for _ in range(2):
        model, crit, opt = B.build(B.model_overrides(TINY, "birq"))
        counts.append(B.count_step_flops(model, crit, opt, sample, seed=3))
    assert counts[0] > 0 and counts[0] == counts[1]
    model, crit, opt = B.build(B.model_overrides(TINY, "bestrq"))
    assert 0 < B.count_step_flops(model, crit, opt, sample, seed=3) < counts[0]


def test_grouped_conv_backward_counted_once_per_gradient():
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv1d(16, 16, kernel_size=5, padding=2, groups=4)
    x = torch.randn(2, 16, 30, requires_grad=True)
    mapping = {torch.ops.aten.convolution_backward: B._conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        conv(x).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    forward = counts[torch.ops.aten.convolution]
    assert forward == 2 * 2 * 30 * 16 * (16 // 4) * 5
    assert counts[torch.ops.aten.convolution_backward] == 2 * forward  # grad input + grad weight


def test_part1_rows_and_memory_structure(part1):
    step = part1
    assert set(step["times"]) == {"bestrq_L2", "birq_L2_k1", "birq_nograd_L2_k1"}
    assert all(len(v) == 2 and min(v) > 0 for v in step["times"].values())
    assert step["flops"]["bestrq_L2"] < step["flops"]["birq_nograd_L2_k1"] < step["flops"]["birq_L2_k1"]
    memory = {name: B.measure_step_memory(over, 1, 0.5, repeats=1)
              for name, (_, _, over) in R.ratio_configs(PLAN).items()}
    for m in memory.values():
        assert {"step_peak_delta_bytes", "peak_rss_bytes", "baseline_rss_bytes", "params"} <= set(m)
        assert m["peak_rss_bytes"] >= m["baseline_rss_bytes"] > 0
    memory = {k: dict(v, step_peak_delta_bytes=max(v["step_peak_delta_bytes"], 1)) for k, v in memory.items()}
    rows = R.summarize_part1(step, memory, PLAN)
    assert [r["config"] for r in rows] == ["birq_L2_k1", "birq_nograd_L2_k1"]
    for r in rows:
        expected = np.median([a / b for a, b in zip(step["times"][r["config"]], step["times"]["bestrq_L2"])])
        assert r["step_ratio"] == pytest.approx(expected)
        assert r["irreducible"] == pytest.approx(1.5) and r["step_target"] == pytest.approx(1.55)
        assert r["step_pass"] == (r["step_ratio"] <= 1.55)
        assert r["mem_ratio"] == pytest.approx(r["mem_step_bytes"] / r["bestrq_mem_step_bytes"])
        assert r["flop_ratio"] == pytest.approx(step["flops"][r["config"]] / step["flops"]["bestrq_L2"])


def test_full_result_schema_table_and_plot(tmp_path, part1):
    step = dict(part1)
    memory = {name: {"step_peak_delta_bytes": 1000 + i, "peak_rss_bytes": 2, "baseline_rss_bytes": 1, "params": 1}
              for i, name in enumerate(R.ratio_configs(PLAN))}
    step["rows"] = R.summarize_part1(step, memory, PLAN)
    tput = R.part2_throughput(PLAN, log=lambda *_: None)
    assert [(r["model"], r["variant"]) for r in tput] == [("tiny", "bestrq"), ("tiny", "birq")]
    assert tput[1]["birq_over_bestrq"] > 0 and tput[1]["step_target"] == pytest.approx(1 + 1 / 2 + 0.05)
    assert tput[1]["flop_ratio"] == pytest.approx(tput[1]["step_flops"] / tput[0]["step_flops"])
    for r in tput:
        assert r["step_flops"] > 0 and r["matmul_rate"] > 0
        assert r["mm_fraction"] == pytest.approx(r["step_flops"] / r["step_s"] / r["matmul_rate"])
    scaling = R.part4_scaling(PLAN, log=lambda *_: None)
    assert [(r["batch"], r["seconds"]) for r in scaling["rows"]] == [(1, 0.5), (1, 1.0), (2, 1.0)]
    assert [r["sweep"] for r in scaling["rows"]] == ["length", "length+batch", "batch"]
    for r in scaling["rows"]:
        b = r["breakdown_s"]
        for key in ("frontend_logmel", "masking_numpy", "anchor_quantizer", "extra_k_layer_pass",
                    "enhanced_quantizer+gumbel", "main_encoder", "backward", "optimizer", "total"):
            assert key in b, key
        pieces = sum(v for k, v in b.items() if k != "total")
        assert pieces <= b["total"] * 1.001 + 1e-4
    labels = {"corpus": "x", "utterances": {"train": 2, "valid": 1}, "audio_seconds": 3.0,
              "updates_per_hubert_iteration": 1, "birq_updates": 2,
              "stage_seconds": {"hubert_it1_train": 2.0, "birq_train": 1.0},
              "disk_bytes": {"hubert_it1_features": 10}, "hubert_disk_bytes": 10,
              "hubert_total_seconds": 2.0, "birq_total_seconds": 1.0, "ratio_birq_to_hubert": 0.5}
    res = {"schema": "birq-bench/1", "date": "d", "command": "c", "machine": {}, "step": step,
           "throughput": tput, "labels": labels, "scaling": scaling}
    path = tmp_path / "latest.json"
    B.dump_json(str(path), res)
    loaded = json.loads(path.read_text())
    assert {"schema", "date", "command", "machine", "step", "throughput", "labels", "scaling"} <= set(loaded)
    text = R.tables(loaded)
    for heading in ("Part 1", "Part 2", "Part 3", "Part 4", "birq_L2_k1", "BiRQ / HuBERT"):
        assert heading in text
    R.plot(loaded, str(tmp_path / "latest.png"))
    assert (tmp_path / "latest.png").stat().st_size > 0


def test_kmeans_label_files(tmp_path):
    feat = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    np.save(tmp_path / "train_0_1.npy", feat)
    (tmp_path / "train_0_1.len").write_text("20\n30\n")
    LP.learn_kmeans(str(tmp_path / "train_0_1.npy"), str(tmp_path / "km.bin"), 4, n_init=1)
    LP.dump_labels(str(tmp_path / "train_0_1.npy"), str(tmp_path / "km.bin"), str(tmp_path / "train.km"))
    lines = (tmp_path / "train.km").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [20, 30]
    assert all(0 <= int(x) < 4 for line in lines for x in line.split())


def test_alternatives_paper_rows_and_cost(tmp_path):
    """Part 2 with fairseq's wav2vec 2.0 and HuBERT on the same audio, part 5 memory rows, part 6 cost."""
    plan = dict(PLAN, baseline_overrides=BASELINES,
                tput=[("base", dict(TINY, encoder_layers=2, enhanced_layer=1), 1, 1.0, 2,
                       ["wav2vec2", "hubert", "bestrq", "birq"])])
    rows = R.part2_throughput(plan, log=lambda *_: None)
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["wav2vec2", "hubert", "bestrq", "birq"]
    for r in rows:
        assert r["step_flops"] > 0 and r["flops_per_audio_s"] == pytest.approx(r["step_flops"] / 1.0)
        assert r["speed_vs_wav2vec2"] > 0
    assert by["wav2vec2"]["speed_vs_wav2vec2"] == pytest.approx(1.0)
    # targets only on the 12 x 768 rows, named "base": BiRQ >= 2x, BEST-RQ >= 3.5x wav2vec 2.0
    assert by["birq"]["speed_target"] == 2.0 and by["bestrq"]["speed_target"] == 3.5
    assert by["birq"]["speed_pass"] == (by["birq"]["speed_vs_wav2vec2"] >= 2.0)
    assert by["hubert"]["speed_target"] is None and by["birq"]["birq_over_bestrq"] > 0
    assert by["wav2vec2"]["birq_over_bestrq"] is None

    memory = {"base:bestrq": {"step_peak_delta_bytes": 100}, "base:birq": {"step_peak_delta_bytes": 140}}
    paper = R.summarize_paper(rows, memory)
    assert [r["variant"] for r in paper] == ["birq"]
    assert paper[0]["mem_ratio"] == pytest.approx(1.4) and paper[0]["mem_target"] == pytest.approx(1.5)
    assert paper[0]["mem_pass"] and paper[0]["step_ratio"] == by["birq"]["birq_over_bestrq"]

    cost = R.cost_at_scale(rows)
    assert [r["variant"] for r in cost] == ["wav2vec2", "hubert", "bestrq", "birq"]
    for r in cost:  # flops/audio-s x 960 h x 100 epochs / (40% of 989 TFLOP/s)
        expected = r["gflop_per_audio_s"] * 1e9 * 960 * 3600 * 100 / (0.4 * 989e12) / 3600
        assert r["h100_hours"] == pytest.approx(expected)
    published = R.published_budgets(rows)
    w2v = published[0]
    assert w2v["measured_as"] == "wav2vec2" and w2v["gpu_hours"] == pytest.approx(64 * 1.6 * 24)
    assert w2v["epochs"] == pytest.approx(400_000 * 64 * 87.5 / (960 * 3600))
    assert w2v["h100_hours_same_audio"] == pytest.approx(
        by["wav2vec2"]["flops_per_audio_s"] * 400_000 * 64 * 87.5 / (0.4 * 989e12) / 3600)
    res = {"throughput": rows, "paper": paper,
           "cost": {"rows": cost, "mfu": R.MFU, "h100_bf16_peak": R.H100_BF16_PEAK, "hours": 960, "epochs": 100,
                    "published": published}}
    text = R.tables(res)
    assert "speed vs wav2vec 2.0" in text and "Part 5" in text and "Part 6" in text and "H100-hours" in text
    assert "wav2vec 2.0 Base" in text and "HuBERT Base" in text


def test_memory_worker_measures_named_configs():
    configs = {"a:bestrq": dict(overrides=B.model_overrides(TINY, "bestrq"), batch=1, seconds=0.5)}
    out = R.run_memory_worker({"configs": configs, "steps": [1, 1]})
    assert set(out) == {"a:bestrq"} and out["a:bestrq"]["peak_rss_bytes"] >= out["a:bestrq"]["baseline_rss_bytes"]


def test_compare_demo_runs_reads_finished_runs_and_sets_the_change_beside_seed_noise(tmp_path, capsys):
    import compare_demo_runs as C

    def run(name, cer, per):
        d = tmp_path / name
        (d / "frozen").mkdir(parents=True)
        results = {s: {t: {"cer": cer + i, "wer": 100.0} for t in ("valid", "test_seen", "test_unseen")}
                   for i, s in enumerate(("none", "bestrq", "birq"))}
        (d / "results.json").write_text(json.dumps({"results": results, "pretraining_final": {
            "birq": {"num_updates": 800, "enhanced_code_ppl": 45.0, "anchor_acc": 0.2}}}))
        for system in ("none", "bestrq", "birq"):  # the superb output, read even when results.json lacks it
            (d / "frozen" / f"{system}.json").write_text(json.dumps({"runs": [
                {"task": t, "downstream": "linear", "valid": {m: per}, "layer_weights": [1.0],
                 "test": {"test_seen": {m: per}, "test_unseen": {m: per + 1}}} for t, m in (("pr", "per"), ("asr", "cer"))]}))
        return f"{name}={d}"

    out = tmp_path / "summary.json"
    assert C.main(["--runs", run("before", 60.0, 55.0), run("after", 60.5, 55.0), run("after2", 62.0, 57.5),
                   "--reference", "after:after2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| finetuned CER birq test_seen | 62.00 | 62.50 | 64.00 |" in text
    assert "| finetuned CER | 0.50 | 1.50 |" in text and "| PER | 0.00 | 2.50 |" in text
    assert json.loads(out.read_text())["runs"]["after2"]["PER birq test_unseen"] == 58.5
    with pytest.raises(SystemExit, match="results.json is missing"):
        C.read_run(tmp_path / "nowhere")
