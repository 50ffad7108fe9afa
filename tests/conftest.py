import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/audio_fixtures.py
BIN = os.path.dirname(sys.executable)  # console scripts of this interpreter's environment


def tiny_model_overrides(**extra):
    """BirqConfig kwargs for a model small enough for unit tests."""
    cfg = dict(encoder_layers=4, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
               conv_channels=8, conv_pos=8, conv_pos_groups=2, anchor_codebook_size=64,
               enhanced_codebook_size=64, enhanced_layer=2, mask_length=3, dropout=0.0,
               attention_dropout=0.0, fp16=False)
    cfg.update(extra)
    return cfg


def run_console(script, args, cwd, timeout=600):
    """Run a console script of this environment as a user would; fail with its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([os.path.join(BIN, script)] + list(args), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A few seconds of synthetic speech-like audio as fairseq manifests (train/valid)."""
    from audio_fixtures import write_manifest

    directory = str(tmp_path_factory.mktemp("synth"))
    write_manifest(directory, "train", 8, seed=0, min_seconds=1.5, max_seconds=1.5)
    write_manifest(directory, "valid", 2, seed=1)
    return directory


@pytest.fixture(scope="session")
def pretrained_checkpoint(synth_data, tmp_path_factory):
    """A BiRQ pretraining checkpoint (examples/pretrain/tiny_birq.yaml, 2 updates of fairseq-hydra-train)."""
    run_dir = str(tmp_path_factory.mktemp("pretrained"))
    run_console("fairseq-hydra-train", [
        "--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", "tiny_birq",
        f"common.user_dir={os.path.join(REPO, 'birq_fairseq')}", f"task.data={synth_data}",
        f"checkpoint.save_dir={run_dir}", f"hydra.run.dir={run_dir}", "optimization.max_update=2",
        "dataset.disable_validation=true"], cwd=run_dir)
    return os.path.join(run_dir, "checkpoint_last.pt")


@pytest.fixture(scope="session")
def e2e_checkpoints(tmp_path_factory):
    """tests/test_finetune_e2e.py's pipeline, once per session, for the tests that need real checkpoints.

    Returns ``(tmp, data, pretrained, finetuned)``: a tiny tone corpus (with ``lexicon.txt``), a
    pretraining checkpoint (3 updates) and a CTC checkpoint finetuned from it (4 updates).
    """
    from test_finetune_e2e import finetune, make_tiny_corpus, pretrain

    tmp = Path(tmp_path_factory.mktemp("e2e_shared"))
    data = make_tiny_corpus(tmp / "corpus")
    pretrained = pretrain(tmp, data)
    return tmp, data, pretrained, finetune(tmp, data, pretrained)


@pytest.fixture(scope="session")
def short_pretrain_run(synth_data, tmp_path_factory):
    """A short real BiRQ pretraining run, shared by the tests that read what fairseq writes.

    fairseq-hydra-train on examples/pretrain/tiny_birq.yaml, 5 updates over synth_data with 2
    clips per batch (4 updates per epoch, so the run spans 2 epochs), validation at update 3
    and at each epoch's end, ``common.log_format=json common.log_interval=1`` into
    ``train.log`` and TensorBoard event files under ``tb/`` (``common.tensorboard_logdir``).
    Returns ``{"dir": Path, "output": the command's stdout + stderr}``.
    """
    run_dir = Path(tmp_path_factory.mktemp("short_pretrain"))
    proc = run_console("fairseq-hydra-train", [
        "--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", "tiny_birq",
        f"common.user_dir={os.path.join(REPO, 'birq_fairseq')}", f"task.data={synth_data}",
        f"checkpoint.save_dir={run_dir / 'checkpoints'}", f"hydra.run.dir={run_dir / 'hydra'}",
        "optimization.max_update=5", "common.log_format=json", "common.log_interval=1",
        f"common.log_file={run_dir / 'train.log'}", f"common.tensorboard_logdir={run_dir / 'tb'}",
        "dataset.max_tokens=64000", "dataset.validate_interval_updates=3"], cwd=str(run_dir))
    return {"dir": run_dir, "output": proc.stdout + proc.stderr}
