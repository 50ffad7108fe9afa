"""fairseq-hydra-train, as a user runs it: BiRQ pretraining with common.user_dir on CPU."""

import json
import os
import struct
from pathlib import Path

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


STREAM_SCALARS = ("anchor_loss", "anchor_acc", "anchor_code_ppl", "enhanced_loss", "enhanced_acc", "enhanced_code_ppl")


def read_tensorboard_scalars(logdir):
    """{run: {tag: {step: value}}} from the TensorBoard event files under logdir (run = sub-folder).

    TensorBoard's own reader (tensorboard.backend.event_processing) needs the tensorboard
    package, which is not a dependency. An event file is a TFRecord stream: per record a
    little-endian uint64 length, its masked CRC-32C, the payload (an Event protobuf), the
    payload's masked CRC-32C. Both checksums are checked, as TensorBoard does; the payloads are
    parsed with the Event protobuf tensorboardX ships.
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    runs = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        run = path.parent.relative_to(logdir).as_posix()
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            payload = data[pos + 12:pos + 12 + length]
            (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
            (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
            assert header_crc == masked_crc32c(header) and payload_crc == masked_crc32c(payload), path
            pos += 16 + length
            event = Event.FromString(payload)
            if event.WhichOneof("what") != "summary":
                continue
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    runs.setdefault(run, {}).setdefault(value.tag, {})[event.step] = value.simple_value
    return runs


@pytest.mark.e2e
def test_tensorboard_logdir_writes_both_streams_scalars(short_pretrain_run):
    """common.tensorboard_logdir works out of the box (tensorboardX is a dependency): the event
    files hold the anchor and enhanced losses, accuracies and code perplexities, per update
    (train_inner), per epoch (train) and per validation (valid), equal to the json log's."""
    run_dir, output = short_pretrain_run["dir"], short_pretrain_run["output"]
    assert "Please install tensorboardX" not in output and "tensorboard not found" not in output
    runs = read_tensorboard_scalars(run_dir / "tb")
    assert {"train_inner", "train", "valid"} <= set(runs), sorted(runs)
    records = {int(r["num_updates"]): r for r in train_records(run_dir / "train.log")}
    assert sorted(records) == [1, 2, 3, 4, 5]
    for key in ("loss",) + STREAM_SCALARS:
        per_update = runs["train_inner"][key]
        assert sorted(per_update) == [1, 2, 3, 4, 5], (key, per_update)
        for step, value in per_update.items():
            assert value == pytest.approx(float(records[step][key]), rel=1e-5, abs=1e-6), (key, step)
        assert sorted(runs["train"][key]) == [4, 5], key  # the end of epochs 1 and 2
        assert sorted(runs["valid"][key]) == [3, 4, 5], key  # validate_interval_updates=3, epoch ends
    for stream in ("anchor", "enhanced"):
        steps = runs["train_inner"]
        assert all(v > 0 for v in steps[f"{stream}_loss"].values())
        assert all(0 <= v <= 1 for v in steps[f"{stream}_acc"].values())
        assert all(1 <= v <= 256 for v in steps[f"{stream}_code_ppl"].values())  # tiny_birq: 256 codes
