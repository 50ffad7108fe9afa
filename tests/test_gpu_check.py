"""The GPU check (examples/benchmarks/gpu_check.sh), issue #10 item 5: its CPU dry run.

``gpu_check.sh --cpu`` runs the script's whole logic on the CPU with tiny models: fp16 and bf16
fairseq-hydra-train runs of BiRQ and BEST-RQ, a resume, and the in-process fp16/bf16 timing of
BEST-RQ, BiRQ, wav2vec 2.0 and HuBERT through fairseq's FP16Optimizer; it writes one JSON. Here
fairseq is importable, so the offline install branch is skipped; its guard (no fairseq, no
wheelhouse) is checked for its error message.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "benchmarks" / "gpu_check.sh"


@pytest.mark.e2e
def test_cpu_dry_run_writes_the_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["schema"] == "birq-gpu-check/1" and res["dry_run_cpu"] and res["ok"]
    assert res["setup_seconds"] is not None
    # four training runs + the resume, every one checked
    runs = res["train"]["runs"]
    assert {(r["system"], r["precision"]) for r in runs} == {
        (s, p) for s in ("birq", "bestrq") for p in ("fp16", "bf16")}
    for r in runs:
        assert r["returncode"] == 0 and r["losses_finite"] and r["saved_at_update"] >= r["updates"]
    resume = res["train"]["resume"]
    assert resume["loaded_checkpoint"] and resume["first_update"] == runs[0]["updates"] + 1
    assert resume["last_update"] == 2 * runs[0]["updates"] and resume["resumed_ok"]
    assert set(res["checks"]) == {"train_birq_fp16", "train_bestrq_fp16", "train_birq_bf16", "train_bestrq_bf16",
                                  "resume", "timing_fp16_losses_finite", "timing_bf16_losses_finite",
                                  "conformer_fp16_losses_finite", "conformer_bf16_losses_finite"}
    assert res["complete"]
    # the paper's Conformer (shrunk for the dry run): BEST-RQ and BiRQ side by side at bf16 and fp16
    for precision in ("bf16", "fp16"):
        t = res["conformer"][precision]
        assert t["layer_type"] == "conformer" and [r["system"] for r in t["rows"]] == ["bestrq", "birq"]
        birq = t["rows"][1]
        lo, hi = birq["step_ratio_vs_bestrq_range"]
        assert lo <= birq["step_ratio_vs_bestrq"] <= hi
    for precision in ("fp16", "bf16"):
        t = res["timing"][precision]
        rows = {r["system"]: r for r in t["rows"]}
        assert list(rows) == ["bestrq", "birq", "wav2vec2", "hubert"]
        assert t["step_target"] == pytest.approx(1 + t["k"] / t["L"] + 0.05)
        for r in rows.values():
            assert r["step_s"] > 0 and r["audio_s_per_s"] == pytest.approx(t["batch"] * t["seconds"] / r["step_s"])
            assert r["step_mem_bytes"] is None  # the CUDA allocator's peak: not on the CPU
        assert rows["birq"]["step_ratio_vs_bestrq"] > 0 and rows["birq"]["speed_vs_wav2vec2"] > 0
        assert "speed_vs_wav2vec2" not in rows["wav2vec2"]


def test_no_fairseq_and_no_wheelhouse_is_a_clear_error(tmp_path):
    """A Python without fairseq and no wheelhouse: exit 2 naming the wheelhouse and how to make it."""
    bare = "/usr/bin/python3"
    if not os.path.exists(bare) or subprocess.run([bare, "-c", "import fairseq"], capture_output=True).returncode == 0:
        pytest.skip("needs a system Python without fairseq")
    env = dict(os.environ, PYTHON=bare, GPU_VENV=str(tmp_path / "venv"), GPU_WHEELHOUSE=str(tmp_path / "none"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert f"no wheelhouse at {tmp_path / 'none'}" in proc.stderr and "make_gpu_wheelhouse.sh" in proc.stderr


def test_parts_run_alone_and_an_unknown_part_is_named(tmp_path):
    """--parts picks what runs (here the Conformer timing alone); the JSON is complete and OK
    with only that part's checks; a misspelt part is refused with the valid names."""
    out = tmp_path / "conformer.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    script = REPO / "examples" / "benchmarks" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu", "--parts", "conformer", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["complete"] and res["ok"] and "train" not in res and "timing" not in res
    assert set(res["checks"]) == {"conformer_bf16_losses_finite", "conformer_fp16_losses_finite"}
    bad = subprocess.run([sys.executable, str(script), "--cpu", "--parts", "timing,trian", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "trian" in bad.stderr and "conformer" in bad.stderr
