"""fairseq-hydra-train, as a user runs it: BiRQ pretraining with common.user_dir on CPU."""

import json
import os

import pytest
import torch

from conftest import REPO, run_console

CONFIG_DIR = os.path.join(REPO, "examples", "pretrain")


def train(data, run_dir, config="tiny_birq", *overrides):
    args = [
        "--config-dir", CONFIG_DIR, "--config-name", config,
        f"common.user_dir={os.path.join(REPO, 'birq_fairseq')}",
        f"task.data={data}",
        f"checkpoint.save_dir={run_dir}/checkpoints",
        f"hydra.run.dir={run_dir}",
        f"common.log_file={run_dir}/train.log",
        "common.log_format=json", "common.log_interval=1",
        # One batch holding all 8 equal-length clips: every update sees the same audio.
        "dataset.max_tokens=400000", "task.max_sample_size=400000",
        "optimization.lr=[0.002]", "lr_scheduler.warmup_updates=2",
        "dataset.validate_interval_updates=0", "dataset.disable_validation=true",
    ] + list(overrides)
    return run_console("fairseq-hydra-train", args, cwd=run_dir)


def train_records(log_file):
    """Per-update records of fairseq's json log file (epoch summaries carry train_* keys).

    fairseq adds its file handler again every epoch, so a line can repeat: keep one per update.
    """
    records = {}
    with open(log_file) as f:
        for line in f:
            if line.startswith("{\""):  # the config dump starts with "{'"
                record = json.loads(line)
                if "loss" in record and "num_updates" in record:
                    records.setdefault(int(record["num_updates"]), record)
    return [records[k] for k in sorted(records)]


@pytest.mark.e2e
def test_pretrain_checkpoint_resume_and_loss_falls(synth_data, tmp_path):
    run_dir = str(tmp_path / "birq")
    os.makedirs(run_dir)
    train(synth_data, run_dir, "tiny_birq", "optimization.max_update=12", "checkpoint.save_interval_updates=6")
    first = train_records(os.path.join(run_dir, "train.log"))
    assert [int(r["num_updates"]) for r in first] == list(range(1, 13))
    for key in ("anchor_loss", "anchor_acc", "anchor_code_ppl", "enhanced_loss", "enhanced_acc",
                "enhanced_code_ppl", "gamma", "gumbel_temp", "penalty_gap", "audio_sec_per_sec"):
        assert key in first[0], key
    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint_last.pt")
    state = torch.load(ckpt, map_location="cpu")  # PyTorch's default weights_only loading
    assert state["optimizer_history"][-1]["num_updates"] == 12
    assert "anchor_quantizer.codebook" in state["model"] and "enhanced_quantizer.projection" in state["model"]

    # Resume: a second invocation continues from update 12, not from scratch.
    train(synth_data, run_dir, "tiny_birq", "optimization.max_update=24", "checkpoint.save_interval_updates=6")
    records = train_records(os.path.join(run_dir, "train.log"))
    resumed = [int(r["num_updates"]) for r in records[len(first):]]
    assert resumed == list(range(13, 25))
    resumed_state = torch.load(ckpt, map_location="cpu")
    assert torch.equal(resumed_state["model"]["anchor_quantizer.codebook"], state["model"]["anchor_quantizer.codebook"])

    # Same batch every update: the anchor loss (fixed targets) falls.
    anchor = [float(r["anchor_loss"]) for r in records]
    assert sum(anchor[-4:]) / 4 < sum(anchor[:4]) / 4 - 0.1, anchor


@pytest.mark.e2e
def test_bestrq_config_logs_anchor_stream_only(synth_data, tmp_path):
    run_dir = str(tmp_path / "bestrq")
    os.makedirs(run_dir)
    train(synth_data, run_dir, "tiny_bestrq", "optimization.max_update=3")
    records = train_records(os.path.join(run_dir, "train.log"))
    assert len(records) == 3
    assert "anchor_loss" in records[0] and "enhanced_loss" not in records[0]
    # BEST-RQ's loss is the anchor loss itself.
    assert all(abs(float(r["loss"]) - float(r["anchor_loss"])) < 1e-3 for r in records)
    state = torch.load(os.path.join(run_dir, "checkpoints", "checkpoint_last.pt"), map_location="cpu")
    assert not any(k.startswith("enhanced") for k in state["model"])
