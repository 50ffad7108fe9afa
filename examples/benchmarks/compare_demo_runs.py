#!/usr/bin/env python
"""`make demo`'s numbers from several finished runs, side by side: the check that a change of a
default leaves the demo within seed noise (issue "Throughput where it matters", item 1).

    .venv/bin/python examples/benchmarks/compare_demo_runs.py \\
        --runs before=RUN_A after=RUN_B after_seed2=RUN_C --reference after:after_seed2 \\
        --json examples/benchmarks/results/<date>_demo_check/summary.json

Each RUN is a finished ``run_demo.py --out`` directory. Read from it: the finetuned CER / WER of
``results.json`` and the frozen evaluation (``frozen/<system>.json``, the ``birq-fairseq superb``
output, so runs whose results.json predates the frozen table are read too). The table gives every
run's numbers and, per metric, the largest difference between the first two runs beside the
largest difference of the ``--reference`` pair (the same code at two seeds: the seed noise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))
import pipeline as P  # noqa: E402

FROZEN_KEYS = (("PER", "pr_linear"), ("frozen CER", "asr_linear"))


def read_run(run_dir: Path) -> Dict[str, float]:
    """{"<metric> <system> <test set>": value} of one finished demo run."""
    doc_path = run_dir / "results.json"
    if not doc_path.exists():
        raise SystemExit(f"compare_demo_runs: {doc_path} is missing: is {run_dir} a finished run_demo.py --out?")
    doc = json.loads(doc_path.read_text())
    values = {}
    for system, per_test in doc["results"].items():
        for test, r in per_test.items():
            if test in P.TEST_SETS:
                values[f"finetuned CER {system} {test}"] = r["cer"]
                values[f"finetuned WER {system} {test}"] = r["wer"]
    for system in P.SYSTEMS:
        path = run_dir / "frozen" / f"{system}.json"
        if path.exists():
            rows = P.frozen_rows(json.loads(path.read_text()))
            for name, key in FROZEN_KEYS:
                for test in ("valid",) + P.TEST_SETS:
                    if test in rows.get(key, {}):
                        values[f"{name} {system} {test}"] = rows[key][test]
    for system, final in doc.get("pretraining_final", {}).items():
        for key in ("anchor_acc", "enhanced_acc", "enhanced_code_ppl"):
            if final.get(key) is not None:
                values[f"end of pretraining {key} {system}"] = float(final[key])
    return values


def max_abs_diff(a: Dict[str, float], b: Dict[str, float], prefix: str) -> float:
    diffs = [abs(a[k] - b[k]) for k in a if k.startswith(prefix) and k in b]
    return max(diffs) if diffs else float("nan")


def table(runs: Dict[str, Dict[str, float]], reference: List[str]) -> str:
    names = list(runs)
    keys = [k for k in runs[names[0]] if all(k in r for r in runs.values())]
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    fmt = lambda v: f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"  # accuracies keep their logged digits
    lines += [f"| {k} | " + " | ".join(fmt(runs[n][k]) for n in names) + " |" for k in keys]
    first, second = names[:2]
    lines += ["", f"| largest difference | {first} vs {second} | {reference[0]} vs {reference[1]} (seed noise) |",
              "| --- | ---: | ---: |"]
    for prefix in ("finetuned CER", "finetuned WER", "PER", "frozen CER"):
        lines.append(f"| {prefix} | {max_abs_diff(runs[first], runs[second], prefix):.2f} | "
                     f"{max_abs_diff(runs[reference[0]], runs[reference[1]], prefix):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="LABEL=RUN_DIR, the first two are compared")
    p.add_argument("--reference", required=True, help="LABEL:LABEL, the same code at two seeds")
    p.add_argument("--json", default=None, help="write the numbers and the table here")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            p.error(f"--runs {item!r}: expected LABEL=RUN_DIR")
        runs[label] = read_run(Path(path))
    reference = args.reference.split(":")
    if len(runs) < 2 or len(reference) != 2 or any(r not in runs for r in reference):
        p.error("--runs needs at least two runs and --reference two of their labels, LABEL:LABEL")
    text = table(runs, reference)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"runs": runs, "reference": reference, "table": text}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
