"""Tables, plots and run summaries of the demo's tooling; RESULTS.md is rendered from a template.

No fairseq import: the report runs from committed JSON summaries only.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from string import Template
from typing import Dict, List, Sequence, Tuple

from pipeline import SYSTEM_LABELS, SYSTEMS, TABLE_ROWS, TEST_SETS
from stages import REPO, curve, parse_fairseq_log, repo_relative

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


def frozen_table(frozen: Dict[str, dict]) -> str:
    """Markdown table of the frozen evaluation of each starting point: ``frozen[system]`` is
    ``pipeline.frozen_rows``'s dict (PER of the phoneme head, CER of the character head)."""
    lines = ["| upstream (frozen) | PER seen voices | PER unseen voices | CER seen voices | CER unseen voices |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for system, rows in frozen.items():
        cells = [f"{rows[key][test]:.1f}" if test in rows.get(key, {}) else "–"
                 for key in ("pr_linear", "asr_linear") for test in TEST_SETS]
        label = "random init" if system == "none" else SYSTEM_LABELS[system]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
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


# --------------------------------------------------------------------------- run summaries
def final_diagnostics(log_path: Path) -> dict:
    if not Path(log_path).exists():
        return {}
    parsed = parse_fairseq_log(log_path)
    out = {}
    if parsed["train"]:
        last = parsed["train"][-1]
        out["train"] = {k: last.get(k) for k in ("num_updates", "anchor_acc", "anchor_code_ppl", "enhanced_acc",
                                                 "enhanced_code_ppl", "gumbel_temp", "gamma", "penalty_gap")}
        ppl = [r.get("enhanced_code_ppl") for r in parsed["train"] if r.get("enhanced_code_ppl") is not None]
        out["enhanced_code_ppl_min"] = min(ppl) if ppl else None
        out["enhanced_code_ppl_first"] = ppl[0] if ppl else None
    if parsed["valid"]:
        last = parsed["valid"][-1]
        out["valid"] = {k: last.get(k) for k in ("num_updates", "anchor_acc", "enhanced_acc", "enhanced_code_ppl")}
    return out


CURVE_KEYS = ("num_updates", "anchor_acc", "anchor_code_ppl", "anchor_loss", "enhanced_acc", "enhanced_code_ppl",
              "enhanced_loss", "penalty_gap", "gumbel_temp")


def compact_logs(logs: dict) -> dict:
    """The training curves a report needs, without the rest of fairseq's log records."""
    return {name: {split: [{k: r[k] for k in CURVE_KEYS if k in r} for r in records]
                   for split, records in parsed.items()} for name, parsed in logs.items()}


def summary_dir(preset_name: str) -> Path:
    return REPO / "examples" / "demo" / "results" / "runs" / preset_name


def save_summary(preset_name: str, key: str, run: dict) -> Path:
    path = summary_dir(preset_name) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_summaries(preset_name: str):
    """Committed per-seed and per-ablation summaries of a preset: ({seed: run}, {name: run})."""
    seeds, ablations = OrderedDict(), OrderedDict()
    directory = summary_dir(preset_name)
    for path in sorted(directory.glob("seed*.json"), key=lambda p: int(p.stem[4:])):
        seeds[int(path.stem[4:])] = json.loads(path.read_text())
    for path in sorted(directory.glob("ablation_*.json")):
        ablations[path.stem[len("ablation_"):]] = json.loads(path.read_text())
    return seeds, ablations



# --------------------------------------------------------------------------- RESULTS.md
def fmt(v, nd=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def ratio_rows(results) -> List[str]:
    """Headline ratios of mean CER: BEST-RQ / no pretraining and BiRQ / BEST-RQ, per test set,
    with whether the gap exceeds the seed spread (|difference of means| > the larger std)."""
    rows = []
    for num, den, target in (("bestrq", "none", 0.8), ("birq", "bestrq", 0.95), ("birq", "none", None)):
        if num not in results or den not in results:
            continue
        cells = []
        for test in TEST_SETS:
            a = [r["cer"] for r in results[num].get(test, [])]
            b = [r["cer"] for r in results[den].get(test, [])]
            if not a or not b:
                cells.append("–")
                continue
            (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
            beyond = abs(ma - mb) > max(sa, sb)
            cells.append(f"{ma / mb:.3f} ({'gap > seed std' if beyond else 'within seed std'})")
        label = f"CER {SYSTEM_LABELS[num]} / {SYSTEM_LABELS[den]}"
        goal = f"≤ {target}" if target else "–"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    return rows


TEMPLATE = Path(__file__).resolve().parent / "templates" / "RESULTS.md"
def merge_seeds(seed_runs) -> "OrderedDict[str, OrderedDict[str, list]]":
    """{system: {test set: [decode result per seed]}} from per-seed summaries."""
    merged = OrderedDict()
    for run in seed_runs.values():
        for system, per_test in run["results"].items():
            for test, r in per_test.items():
                merged.setdefault(system, OrderedDict()).setdefault(test, []).append(r)
    return merged


def _table(header: Sequence[str], align: Sequence[str], rows: List[str]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + rows)


def per_seed_table(seed_runs) -> str:
    rows = []
    for seed, run in seed_runs.items():
        for system in TABLE_ROWS:
            r = run["results"].get(system)
            if r:
                valid = f"{r['valid']['cer']:.1f}" if "valid" in r else "–"
                rows.append(f"| {seed} | {SYSTEM_LABELS[system]} | {valid} | {r['test_seen']['cer']:.1f} | "
                            f"{r['test_unseen']['cer']:.1f} | {r['test_seen']['wer']:.1f} | "
                            f"{r['test_unseen']['wer']:.1f} |")
    return _table(["seed", "system", "valid CER", "seen CER", "unseen CER", "seen WER", "unseen WER"],
                  ["---:", "---", "---:", "---:", "---:", "---:", "---:"], rows)


def probe_table(seed_runs) -> str:
    rows = []

    def row(seed, what, point, m):
        rows.append(f"| {seed} | {what} | {point.get('num_updates')} | {m['pnmi']:.3f} | {m['pnmi_chance']:.3f} | "
                    f"{m['pnmi'] - m['pnmi_chance']:.3f} | {m['char_purity']:.3f} | {m['code_perplexity']:.1f} |")

    for seed, run in seed_runs.items():
        probe = run.get("probe")
        if not probe:
            continue
        series = [p for system in ("bestrq", "birq") for p in as_list(probe.get(system) or [])]
        anchor = next((p for p in series if "anchor" in p.get("streams", {})), None)
        if anchor:
            row(seed, "anchor (BEST-RQ's labels)", anchor, anchor["streams"]["anchor"])
        seen = set()
        for point in as_list(probe.get("birq") or []):
            if "enhanced" in point.get("streams", {}) and point.get("num_updates") not in seen:
                seen.add(point.get("num_updates"))
                row(seed, "BiRQ enhanced", point, point["streams"]["enhanced"])
    return _table(["seed", "codes", "update", "PNMI", "PNMI chance", "PNMI − chance", "char purity", "code ppl"],
                  ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:"], rows)


def _enhanced_ppl_path(d: dict) -> str:
    t = d.get("train", {})
    if t.get("enhanced_code_ppl") is None:
        return "–"
    return (f"{fmt(d.get('enhanced_code_ppl_first'))} → {fmt(d.get('enhanced_code_ppl_min'))} → "
            f"{fmt(t.get('enhanced_code_ppl'))}")


def diagnostics_table(seed_runs) -> str:
    rows = []
    for seed, run in seed_runs.items():
        for system in ("bestrq", "birq"):
            d = run["diagnostics"].get(system) or {}
            t, v = d.get("train", {}), d.get("valid", {})
            rows.append(f"| {seed} | {SYSTEM_LABELS[system]} | {fmt(t.get('anchor_acc'))} | "
                        f"{fmt(t.get('anchor_code_ppl'))} | {fmt(t.get('enhanced_acc'))} | {_enhanced_ppl_path(d)} | "
                        f"{fmt(v.get('enhanced_code_ppl'))} |")
    return _table(["seed", "system", "anchor acc", "anchor code ppl", "enhanced acc",
                   "enhanced code ppl (first → min → last)", "valid enhanced code ppl"],
                  ["---:", "---", "---:", "---:", "---:", "---", "---:"], rows)


def ablation_table(seed_runs, ablation_runs, descriptions: Dict[str, str]) -> str:
    if not ablation_runs:
        return "_No ablation summaries committed._"
    first_seed = next(iter(seed_runs))
    rows = [("BiRQ (reference)", "the paper's settings, as above", seed_runs[first_seed])]
    rows += [(name, descriptions.get(name, run.get("description", ""))
              + (f" (seed {run['seed']})" if run.get("seed", first_seed) != first_seed else ""), run)
             for name, run in ablation_runs.items()]
    lines = []
    for name, desc, run in rows:
        d, r = run["diagnostics"].get("birq") or {}, run["results"].get("birq")
        t = d.get("train", {})
        series = (run.get("probe") or {}).get("birq") or []
        final = as_list(series)[-1]["streams"].get("enhanced") if series else None
        pnmi = f"{final['pnmi'] - final['pnmi_chance']:.3f}" if final else "–"
        w = (lambda test, m: f"{r[test][m]:.1f}" if r and test in r else "–")  # noqa: E731
        lines.append(f"| {name} | {desc} | {_enhanced_ppl_path(d) if t else '–'} | {fmt(t.get('enhanced_acc'))} | "
                     f"{fmt(t.get('anchor_acc'))} | {pnmi} | {w('valid', 'cer')} | {w('test_seen', 'cer')} | "
                     f"{w('test_unseen', 'cer')} | {w('test_seen', 'wer')} | {w('test_unseen', 'wer')} |")
    return _table(["run", "change", "enhanced code ppl (first → min → last)", "enhanced acc", "anchor acc",
                   "enhanced PNMI − chance", "valid CER", "CER seen", "CER unseen", "WER seen", "WER unseen"],
                  ["---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"], lines)


def corpus_section(corpus: dict) -> str:
    splits = corpus.get("splits") or {}
    # corpus.json has no total count of its own: the splits' sum
    utterances = corpus.get("total_utterances") or sum(st["utterances"] for st in splits.values())
    lines = [f"`{repo_relative(str(corpus.get('_dir')))}`: preset `{corpus.get('size')}`, seed {corpus.get('seed')}, "
             f"{utterances} utterances, {corpus.get('total_hours')} h; "
             f"engines {json.dumps(corpus.get('engine_versions', {}))}.", ""]
    lines.append(_table(["split", "utterances", "hours", "mean s", "labelled", "voices"],
                        ["---", "---:", "---:", "---:", "---", "---:"],
                        [f"| {split} | {st['utterances']} | {st['hours']} | {st['mean_seconds']} | {st['labelled']} | "
                         f"{len(st.get('voices', {}))} |" for split, st in splits.items()]))
    lines += ["", f"Seen voices ({len(corpus.get('seen_voices', []))}): {', '.join(corpus.get('seen_voices', []))}.",
              "", f"Unseen voices ({len(corpus.get('unseen_voices', []))}, only in test_unseen): "
              f"{', '.join(corpus.get('unseen_voices', []))}."]
    return "\n".join(lines)


def timings_table(runs: Dict[str, dict]) -> str:
    rows = []
    for name, run in runs.items():
        total_w = total_c = 0.0
        for stage, t in run["timings"].items():
            rows.append(f"| {name} | {stage} | {t['wall_seconds'] or 0:.0f} | {t['cpu_seconds'] or 0:.0f} |")
            total_w += t["wall_seconds"] or 0
            total_c += t["cpu_seconds"] or 0
        rows.append(f"| {name} | **total** | **{total_w:.0f}** | **{total_c:.0f}** |")
    return _table(["run", "stage", "wall s", "CPU s"], ["---", "---", "---:", "---:"], rows)


def render_results_md(preset_name: str, preset: dict, seed_runs, ablation_runs, corpus: dict,
                      ablation_descriptions: Dict[str, str], plots_rel: str,
                      label_health_table: str = "_No label-health summaries committed._",
                      ladder_table: str = "_No ladder rungs committed._",
                      reference_table: str = "_No reference runs committed._",
                      targets_table: str = "_No ladder rungs committed._") -> str:
    """RESULTS.md: templates/RESULTS.md filled with tables made from the committed summaries only
    (nothing here depends on the time or the machine it runs on, so the committed file can be
    checked against a fresh rendering)."""
    merged = merge_seeds(seed_runs)
    first_seed, last_seed = next(iter(seed_runs)), max(seed_runs)
    grid = REPO / "examples" / "demo" / "regime" / "grid.md"
    analysis = REPO / "examples" / "demo" / "results_analysis.md"
    values = dict(
        summary_dir=os.path.relpath(summary_dir(preset_name), REPO),
        newest_date=max(str(r.get("date", "")) for r in list(seed_runs.values()) + list(ablation_runs.values())),
        preset_name=preset_name,
        preset_settings=json.dumps({k: v for k, v in preset.items() if k != "model"}),
        model=json.dumps(preset["model"]),
        seeds=", ".join(str(s) for s in seed_runs),
        corpus_seed=corpus.get("seed"),
        code_versions=", ".join(sorted({str(r.get("code_version")) for r in seed_runs.values()})),
        cer_table=wer_table(merged, "cer"), wer_table=wer_table(merged, "wer"),
        ratio_table=_table(["ratio", "seen voices", "unseen voices", "target"], ["---", "---:", "---:", "---"],
                           ratio_rows(merged)),
        per_seed_table=per_seed_table(seed_runs), plots=plots_rel,
        label_health_table=label_health_table.rstrip(), ladder_table=ladder_table.rstrip(),
        reference_table=reference_table.rstrip(), targets_table=targets_table.rstrip(),
        probe_table=probe_table(seed_runs), diagnostics_table=diagnostics_table(seed_runs),
        first_seed=first_seed, ablation_table=ablation_table(seed_runs, ablation_runs, ablation_descriptions),
        grid=grid.read_text().rstrip() if grid.exists() else "_No grid summaries committed._",
        analysis=analysis.read_text().rstrip() if analysis.exists() else "",
        corpus_section=corpus_section(corpus),
        timings_table=timings_table(OrderedDict(list(seed_runs.items()) + list(ablation_runs.items()))),
        ablation_names=" ".join(ablation_runs) or "stopgrad", last_seed=last_seed,
        commands="\n".join(repo_relative(c) for c in seed_runs[last_seed].get("commands", [])),
    )
    return Template(TEMPLATE.read_text()).substitute(values)
