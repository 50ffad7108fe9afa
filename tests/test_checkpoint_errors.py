"""The wrong checkpoint gives one line naming the file and the way out (issue #11, item 4).

Cases: a pretraining checkpoint given to decoding (fairseq-generate, birq-fairseq-infer,
``python -m birq_fairseq wer``); a finetuned checkpoint, a bare state_dict or another model
family given as ``model.w2v_path``; a truncated ``checkpoint_last.pt`` on resume (the run
stops naming the newest intact ``checkpoint_*.pt`` and ``checkpoint.restore_file=``, and
that override resumes); a missing ``dict.ltr.txt`` at decode time. Checks and messages
live in ``birq_fairseq/checkpoints.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import birq_fairseq  # noqa: E402,F401  installs the checkpoint-reading errors
from birq_fairseq import checkpoints  # noqa: E402
from birq_fairseq.checkpoints import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "birq_fairseq"
BIN = Path(sys.executable).parent


def fake_checkpoint(path: Path, model: str, task: str, num_updates: int = 2, **model_fields) -> Path:
    """A fairseq-shaped checkpoint (config only, no weights) of the given model family."""
    torch.save({"cfg": {"model": {"_name": model, **model_fields}, "task": {"_name": task}}, "model": {},
                "optimizer_history": [{"criterion_name": "x", "best_loss": None, "num_updates": num_updates}],
                "extra_state": {}}, str(path))
    return path


def truncate(src: Path, dst: Path) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: len(data) // 2])
    return dst


def failing(cmd, cwd) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"expected a failure: {' '.join(map(str, cmd))}\n{out[-3000:]}"
    return out


def error_line(output: str, *parts: str) -> str:
    """The one output line holding the message: every part on that single line."""
    lines = [line for line in output.splitlines() if parts[0] in line and "raise " not in line]
    assert lines, output[-3000:]
    line = lines[-1]
    for part in parts:
        assert part in line, (part, line)
    return line


# --------------------------------------------------------------------------- unit: kinds and reading errors
def test_describe_tells_the_kinds_apart():
    assert checkpoints.describe({"cfg": {"model": {"_name": "birq"}, "task": {"_name": "birq_pretraining"}}})[0] \
        == "pretraining"
    assert checkpoints.describe({"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_path": "p.pt"},
                                         "task": {"_name": "audio_finetuning"}}})[0] == "finetuned"
    assert checkpoints.describe({"cfg": {"model": {"_name": "transformer"}, "task": {"_name": "translation"}}})[0] \
        == "other"
    assert checkpoints.describe({"encoder.weight": torch.zeros(1)})[0] == "not_fairseq"


def test_bare_state_dict_names_the_file(tmp_path):
    from fairseq import checkpoint_utils

    path = tmp_path / "weights.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError) as e:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))  # fairseq alone: KeyError: 'best_loss'
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "bare model state_dict" in msg


def test_truncated_checkpoint_names_newest_intact_sibling(tmp_path):
    from fairseq import checkpoint_utils

    good = fake_checkpoint(tmp_path / "checkpoint_1_200.pt", "birq", "birq_pretraining", num_updates=200)
    # fewer updates, though written later and named like a later epoch: intact, but not the newest
    fake_checkpoint(tmp_path / "checkpoint9.pt", "birq", "birq_pretraining", num_updates=100)
    truncate(good, tmp_path / "checkpoint_2_400.pt")  # newer but cut short
    last = truncate(good, tmp_path / "checkpoint_last.pt")
    with pytest.raises(CheckpointError) as e:
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{last} is truncated or corrupt")
    assert f"checkpoint.restore_file={good}" in msg

    lonely = tmp_path / "alone"
    lonely.mkdir()
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        checkpoint_utils.load_checkpoint_to_cpu(str(truncate(good, lonely / "checkpoint_last.pt")))


def test_require_finetuned_names_other_families(tmp_path):
    state = {"cfg": {"model": {"_name": "transformer"}, "task": {"_name": "translation"}}}
    with pytest.raises(CheckpointError, match="holds a 'transformer' model .* not a finetuned CTC model"):
        checkpoints.require_finetuned("mt.pt", state)
    with pytest.raises(CheckpointError, match="not BiRQ"):
        checkpoints.require_birq("w2v.pt", {"cfg": {"model": {"_name": "wav2vec2"}, "task": {"_name": "audio_pretraining"}}})
    checkpoints.require_birq("b.pt", {"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": {"_name": "birq"}}},
                                              "task": {"_name": "audio_finetuning"}}})


@pytest.mark.parametrize("kind", ["hubert", "bare", "finetuned"])
def test_wrong_w2v_path_stops_before_building(tmp_path, kind):
    """birq_finetuning's build_model checks model.w2v_path before wav2vec_ctc reads it."""
    from fairseq import tasks
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig
    from omegaconf import OmegaConf

    (tmp_path / "dict.ltr.txt").write_text("A 1\nB 1\n| 1\n")
    if kind == "hubert":
        path = fake_checkpoint(tmp_path / "hubert.pt", "hubert", "hubert_pretraining")
        expected = "holds a 'hubert' model"
    elif kind == "bare":
        path = tmp_path / "weights.pt"
        torch.save({"encoder.weight": torch.zeros(1)}, str(path))
        expected = "bare model state_dict"
    else:
        path = fake_checkpoint(tmp_path / "ft.pt", "wav2vec_ctc", "audio_finetuning", w2v_path="/runs/pre.pt")
        expected = "is a finetuned checkpoint (model 'wav2vec_ctc'), not a pretraining one"
    task = tasks.setup_task(OmegaConf.create({"_name": "birq_finetuning", "data": str(tmp_path)}))
    model_cfg = OmegaConf.structured(Wav2Vec2CtcConfig(w2v_path=str(path)))
    with pytest.raises(CheckpointError) as e:
        task.build_model(model_cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"model.w2v_path={path}" in msg and expected in msg
    if kind == "finetuned":
        assert "it was finetuned from /runs/pre.pt" in msg


# --------------------------------------------------------------------------- e2e: the console scripts
@pytest.mark.e2e
def test_pretraining_checkpoint_given_to_decoding(e2e_checkpoints):
    tmp, data, pretrained, _ = e2e_checkpoints
    parts = (f"{pretrained} is a pretraining checkpoint", "finetune it first", f"model.w2v_path={pretrained}")
    out = failing([BIN / "fairseq-generate", data, "--task", "birq_finetuning", "--path", pretrained,
                   "--gen-subset", "test", "--scoring", "wer", "--post-process", "letter", "--user-dir", PKG,
                   "--cpu"], tmp)
    assert "AssertionError" not in out
    error_line(out, *parts)
    out = failing([sys.executable, "-m", "birq_fairseq.infer", "task=audio_finetuning", f"task.data={data}",
                   f"common_eval.path={pretrained}", "common.cpu=true"], tmp)
    assert error_line(out, *parts).startswith("birq-fairseq-infer: error: ")
    out = failing([sys.executable, "-m", "birq_fairseq", "wer", "--path", pretrained, "--data", data], tmp)
    assert error_line(out, *parts).startswith("birq-fairseq wer: error: ")
    assert "Traceback" not in out


@pytest.mark.e2e
def test_finetuned_checkpoint_given_as_w2v_path(e2e_checkpoints):
    tmp, data, pretrained, finetuned = e2e_checkpoints
    out = failing([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / "finetune",
                   "--config-name", "tiny_ctc", f"common.user_dir={PKG}", f"task.data={data}",
                   f"model.w2v_path={finetuned}", f"checkpoint.save_dir={tmp / 'wrong_ft'}",
                   f"hydra.run.dir={tmp / 'wrong_ft'}", "optimization.max_update=1"], tmp)
    error_line(out, f"model.w2v_path={finetuned} is a finetuned checkpoint", f"finetuned from {pretrained}")


@pytest.mark.e2e
def test_missing_dictionary_at_decode_time(e2e_checkpoints, tmp_path):
    tmp, data, _, finetuned = e2e_checkpoints
    bare = tmp_path / "data"
    shutil.copytree(data, bare)
    os.remove(bare / "dict.ltr.txt")
    out = failing([BIN / "fairseq-generate", bare, "--task", "birq_finetuning", "--path", finetuned,
                   "--gen-subset", "test", "--scoring", "wer", "--post-process", "letter", "--user-dir", PKG,
                   "--cpu"], tmp)
    error_line(out, f"{bare / 'dict.ltr.txt'} not found", "copy the dict.ltr.txt the model was finetuned with",
               "--target-dictionary")


@pytest.mark.e2e
def test_truncated_checkpoint_last_on_resume(tmp_path):
    """Resume stops naming the newest intact checkpoint and the override; the override then resumes."""
    from test_robustness import make_corpus, run_train

    data = make_corpus(tmp_path / "data", n_train=6, n_valid=1, min_seconds=0.5, max_seconds=1.0)
    run = ["checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=-1",
           "checkpoint.save_interval=1000", "dataset.max_tokens=40000"]
    run_train(data, tmp_path, "optimization.max_update=4", *run)
    ckpt = tmp_path / "ckpt"
    at_2, at_4 = sorted(ckpt.glob("checkpoint_*_2.pt")), sorted(ckpt.glob("checkpoint_*_4.pt"))
    assert len(at_2) == len(at_4) == 1, sorted(os.listdir(ckpt))
    truncate(at_4[0], at_4[0])  # the newest numbered one is cut short too: the update-2 one is the way out
    truncate(ckpt / "checkpoint_last.pt", ckpt / "checkpoint_last.pt")

    log = run_train(data, tmp_path, "optimization.max_update=6", *run, check=False)
    assert "failed finding central directory" in log  # torch's reason is kept, but now with the file named
    error_line(log, f"{ckpt / 'checkpoint_last.pt'} is truncated or corrupt",
               f"checkpoint.restore_file={at_2[0]}")

    log = run_train(data, tmp_path, "optimization.max_update=6", *run, f"checkpoint.restore_file={at_2[0]}")
    assert f"Loaded checkpoint {at_2[0]}" in log and "@ 2 updates" in log, log[-3000:]
    assert "done training" in log
    assert torch.load(ckpt / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == 6
