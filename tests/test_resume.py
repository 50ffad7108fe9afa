"""Resume (issue #6, item 3), through the ``fairseq-hydra-train`` console script on CPU.

(a) A run is SIGKILLed right after its first checkpoint (update N, mid-epoch); restarting
    the same command resumes from checkpoint_last.pt at update N and finishes.
(b) Determinism: the killed-and-resumed run must reproduce an uninterrupted run with the
    same seed: same logged per-update losses after N, same final parameters and buffers
    (quantizer buffers, PenaltyBaseline, logged gamma / gumbel_temp).

fairseq makes this possible on CPU: it reseeds torch every update (seed + num_updates),
checkpoints the optimizer / lr-scheduler / data-iterator position (mid-epoch resume
skips the consumed batches) and the model's buffers. Anything drawn from another RNG
that is not checkpointed (e.g. numpy's global RNG, seeded once per process) breaks it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_robustness import make_corpus, run_train, train_cmd, train_inner  # noqa: E402

N = 3  # first checkpoint; ~5 batches of 2-3 clips per epoch, so this is mid-epoch
RUN = [
    f"optimization.max_update={2 * N}", f"checkpoint.save_interval_updates={N}",
    "checkpoint.save_interval=1000",  # no end-of-epoch saves: the first save is at update N
    "checkpoint.keep_interval_updates=-1", "dataset.max_tokens=40000",
    "lr_scheduler.warmup_updates=2", "model.mask_prob=0.5",
    # a gamma ramp, so that every update logs a different gamma (as gumbel_temp and lr do)
    "criterion.gamma=0.5", "++criterion.gamma_final=2.0", f"++criterion.gamma_ramp_updates={2 * N}",
]

_CACHE = {}


def experiment(root: Path, user_dir=None, env=None):
    """Reference run of 2N updates; a run SIGKILLed after its update-N checkpoint; its resume."""
    key = str(root)
    if key in _CACHE:
        return _CACHE[key]
    data = make_corpus(root / "data", n_train=12, n_valid=1, min_seconds=0.5, max_seconds=1.2)

    ref_dir = root / "reference"
    ref_log = run_train(data, ref_dir, *RUN, user_dir=user_dir, env=env)

    killed_dir = root / "killed"
    (killed_dir).mkdir()
    proc = subprocess.Popen(train_cmd(data, killed_dir, *RUN, user_dir=user_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    killed_log = []
    try:
        for line in proc.stdout:
            killed_log.append(line)
            if "Saved checkpoint" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    killed_log = "".join(killed_log)
    assert proc.returncode == -signal.SIGKILL, killed_log[-3000:]
    ckpt_last = killed_dir / "ckpt" / "checkpoint_last.pt"
    assert ckpt_last.exists(), killed_log[-3000:]
    shutil.copy(ckpt_last, root / "killed_at_N.pt")

    resumed_log = run_train(data, killed_dir, *RUN, user_dir=user_dir, env=env)
    result = dict(ref_log=ref_log, killed_log=killed_log, resumed_log=resumed_log, ref_dir=ref_dir,
                  killed_dir=killed_dir, killed_ckpt=root / "killed_at_N.pt")
    _CACHE[key] = result
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return experiment(tmp_path_factory.mktemp("resume"))


def load(path):
    return torch.load(path)  # weights_only=True default: pretraining checkpoints are safe to load


@pytest.mark.e2e
def test_kill9_then_resume_continues_from_saved_update(runs):
    killed = load(runs["killed_ckpt"])
    assert killed["optimizer_history"][-1]["num_updates"] == N
    itr = killed["extra_state"]["train_iterator"]
    assert itr["iterations_in_epoch"] > 0, itr  # saved mid-epoch: the hard case

    log = runs["resumed_log"]
    assert f"@ {N} updates" in log and "Loaded checkpoint" in log, log[-3000:]
    inner = train_inner(log)
    assert min(inner) == N + 1, sorted(inner)  # continues, does not restart at 1
    assert max(inner) == 2 * N
    assert "done training" in log
    final = load(runs["killed_dir"] / "ckpt" / "checkpoint_last.pt")
    assert final["optimizer_history"][-1]["num_updates"] == 2 * N


@pytest.mark.e2e
def test_runs_identical_up_to_the_checkpoint(runs):
    """Same seed, same data: the reference's update-N checkpoint equals the killed run's."""
    ref_n = next((runs["ref_dir"] / "ckpt").glob(f"checkpoint_*_{N}.pt"))
    a, b = load(ref_n)["model"], load(runs["killed_ckpt"])["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_inner, killed_inner = train_inner(runs["ref_log"]), train_inner(runs["killed_log"])
    for u in range(1, N + 1):
        assert ref_inner[u]["loss"] == killed_inner[u]["loss"], u


@pytest.mark.e2e
def test_schedules_and_buffers_resume_exactly(runs):
    ref, res = train_inner(runs["ref_log"]), train_inner(runs["resumed_log"])
    assert len({ref[u]["gamma"] for u in ref}) == 2 * N  # the schedule really moves every update
    for u in range(N + 1, 2 * N + 1):
        # gumbel_temp comes from the model's num_updates, gamma from the criterion's schedule,
        # lr from the scheduler state: all must be restored by the resume
        for key in ("gumbel_temp", "gamma", "lr"):
            assert res[u][key] == ref[u][key], (u, key, res[u][key], ref[u][key])
    killed = load(runs["killed_ckpt"])["model"]
    final_ref = load(runs["ref_dir"] / "ckpt" / "checkpoint_last.pt")["model"]
    final_res = load(runs["killed_dir"] / "ckpt" / "checkpoint_last.pt")["model"]
    for k in killed:
        if "quantizer" in k:  # frozen, seeded buffers: identical everywhere, always
            assert torch.equal(killed[k], final_res[k]) and torch.equal(final_ref[k], final_res[k]), k
    # the running baseline v^ was checkpointed (a finite value, not re-initialised to nan/inf)
    assert torch.isfinite(killed["penalty_baseline.ema"]) and torch.isfinite(killed["penalty_baseline.minimum"])


@pytest.mark.e2e
def test_resumed_run_reproduces_uninterrupted_run(runs):
    """Bit-exact on CPU: the losses after N and the final parameters/buffers are identical."""
    ref, res = train_inner(runs["ref_log"]), train_inner(runs["resumed_log"])
    diffs = {u: (ref[u]["loss"], res[u]["loss"]) for u in range(N + 1, 2 * N + 1)
             if ref[u]["loss"] != res[u]["loss"] or ref[u]["anchor_loss"] != res[u]["anchor_loss"]}
    assert not diffs, f"per-update losses after resume differ (reference, resumed): {diffs}"
    final_ref = load(runs["ref_dir"] / "ckpt" / "checkpoint_last.pt")["model"]
    final_res = load(runs["killed_dir"] / "ckpt" / "checkpoint_last.pt")["model"]
    bad = [k for k in final_ref if not torch.equal(final_ref[k], final_res[k])]
    assert not bad, f"parameters/buffers differ after resume: {bad[:8]}"


def test_batch_crop_does_not_depend_on_global_numpy_state(tmp_path):
    """Fast, pinpoint version of the determinism failure: fairseq's collater crops clips to the
    batch's shortest with numpy's global RNG, which a resumed process does not restore."""
    import numpy as np

    from birq_fairseq.data.audio import CheckedFileAudioDataset

    data = make_corpus(tmp_path / "data", n_train=3, n_valid=1, min_seconds=0.5, max_seconds=1.5)
    ds = CheckedFileAudioDataset(manifest_path=str(data / "train.tsv"), sample_rate=16000, min_audio_samples=880,
                                 max_sample_size=96000, min_sample_size=0, pad=False, normalize=False)
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(1)
    samples = [ds[i] for i in range(len(ds))]
    assert len({len(s["source"]) for s in samples}) > 1  # different lengths: the batch is cropped
    batches = []
    for global_seed in (0, 1, 2):
        np.random.seed(global_seed)
        batches.append(ds.collater(samples)["net_input"]["source"])
    assert all(torch.equal(batches[0], b) for b in batches[1:]), \
        "the crop of a batch changes with numpy's global RNG state: resumed runs are not reproducible"
