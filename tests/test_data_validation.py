"""Audio manifest / file validation (issue #6, item 1).

Every bad input must stop the run with a message naming the manifest file, the line and
the audio path (default), or, with ``task.skip_invalid_audio=true``, be skipped and counted
in a warning while the remaining batch still trains. Dataset-level tests are fast; one
test goes through the ``fairseq-hydra-train`` console script for the user-visible message.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from audio_fixtures import synth_utterance, write_manifest  # noqa: E402

from birq_fairseq.data.audio import CheckedFileAudioDataset  # noqa: E402
from birq_fairseq.modules.frontend import min_samples_for_one_step  # noqa: E402

SR = 16000
MIN_SAMPLES = min_samples_for_one_step(SR)  # 880 at 16 kHz


# --------------------------------------------------------------------------- helpers
def good_corpus(tmp_path: Path, n: int = 4) -> Path:
    data = tmp_path / "data"
    write_manifest(str(data), "train", n, seed=0, min_seconds=0.5, max_seconds=0.8)
    return data


def append_line(data: Path, line: str) -> int:
    """Append a raw manifest line; return its 1-based line number."""
    tsv = data / "train.tsv"
    lines = tsv.read_text().splitlines()
    lines.append(line)
    tsv.write_text("\n".join(lines) + "\n")
    return len(lines)


def add_wav(data: Path, name: str, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16",
            manifest_samples: int | None = None) -> int:
    rel = f"wav/{name}.wav"
    sf.write(str(data / rel), audio, sr, subtype=subtype)
    n = len(audio) if manifest_samples is None else manifest_samples
    return append_line(data, f"{rel}\t{n}")


def tone(seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    return synth_utterance(np.random.default_rng(7), seconds, sr)


def dataset(data: Path, **kw) -> CheckedFileAudioDataset:
    args = dict(manifest_path=str(data / "train.tsv"), sample_rate=SR, min_audio_samples=MIN_SAMPLES,
                check_headers=True, skip_invalid=False, resample=False, max_sample_size=96000,
                min_sample_size=0, pad=False, normalize=False)
    args.update(kw)
    return CheckedFileAudioDataset(**args)


def expect_stop(data: Path, line: int, rel: str, *words: str, **kw) -> str:
    """Default policy: ValueError naming manifest:line and the path, plus the reason."""
    with pytest.raises(ValueError) as err:
        dataset(data, **kw)
    msg = str(err.value)
    assert f"train.tsv:{line}:" in msg, msg
    assert rel in msg, msg
    for w in words:
        assert w in msg, msg
    assert "task.skip_invalid_audio=true" in msg, msg  # tells the user the way out
    return msg


def tiny_model():
    from test_robustness import tiny_model as tm
    return tm()


def train_one_batch(ds: CheckedFileAudioDataset) -> float:
    """Collate every item, one forward/backward through the tiny model + criterion."""
    from test_robustness import tiny_criterion

    model = tiny_model()
    criterion = tiny_criterion()
    batch = ds.collater([ds[i] for i in range(len(ds))])
    model.train()
    loss, _, log = criterion(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return float(loss)


# --------------------------------------------------------------------------- load-time checks
def test_good_corpus_loads(tmp_path):
    ds = dataset(good_corpus(tmp_path))
    assert len(ds) == 4 and ds.read_failures == 0


def test_missing_file(tmp_path):
    data = good_corpus(tmp_path)
    line = append_line(data, "wav/does_not_exist.wav\t12000")
    expect_stop(data, line, "wav/does_not_exist.wav", "file not found")


def test_corrupt_audio(tmp_path):
    data = good_corpus(tmp_path)
    (data / "wav/garbage.wav").write_bytes(os.urandom(4000))
    line = append_line(data, "wav/garbage.wav\t12000")
    expect_stop(data, line, "wav/garbage.wav", "unreadable audio")


def test_zero_length_clip(tmp_path):
    data = good_corpus(tmp_path)
    line = add_wav(data, "empty", np.zeros(0, dtype=np.float32))
    expect_stop(data, line, "wav/empty.wav", "0 samples", "receptive field")


def test_clip_shorter_than_receptive_field(tmp_path):
    data = good_corpus(tmp_path)
    line = add_wav(data, "short", tone()[: MIN_SAMPLES - 1])
    expect_stop(data, line, "wav/short.wav", f"{MIN_SAMPLES - 1} samples", "receptive field",
                str(MIN_SAMPLES))
    # exactly the receptive field is fine
    data2 = good_corpus(tmp_path / "b")
    add_wav(data2, "just_enough", tone()[:MIN_SAMPLES])
    assert len(dataset(data2)) == 5


def test_wrong_sample_rate_stops_and_names_resample_flag(tmp_path):
    data = good_corpus(tmp_path)
    line = add_wav(data, "rate8k", tone(0.5, 8000), sr=8000)
    expect_stop(data, line, "wav/rate8k.wav", "8000 Hz", "16000 Hz", "task.resample_audio=true")


def test_wrong_sample_rate_with_resample_trains(tmp_path):
    data = good_corpus(tmp_path)
    audio8k = tone(0.6, 8000)
    add_wav(data, "rate8k", audio8k, sr=8000)
    ds = dataset(data, resample=True)
    assert len(ds) == 5
    item = ds[4]
    assert item["source"].shape[0] == 2 * len(audio8k)  # resampled to 16 kHz
    assert ds.sizes[4] == 2 * len(audio8k)  # batching uses the 16 kHz length
    train_one_batch(ds)


def test_multichannel(tmp_path):
    data = good_corpus(tmp_path)
    stereo = np.stack([tone(), tone()], axis=1)
    line = add_wav(data, "stereo", stereo)
    expect_stop(data, line, "wav/stereo.wav", "2 channels", "mono")


def test_wrong_sample_count(tmp_path):
    data = good_corpus(tmp_path)
    audio = tone()
    line = add_wav(data, "miscounted", audio, manifest_samples=len(audio) + 123)
    expect_stop(data, line, "wav/miscounted.wav", f"{len(audio) + 123}", f"{len(audio)}")


def test_malformed_line_stops_even_when_skipping(tmp_path):
    data = good_corpus(tmp_path)
    line = append_line(data, "wav/train_0000.wav 12000")  # space instead of tab
    expect_stop(data, line, "wav/train_0000.wav", "path<TAB>num_samples")
    # a broken manifest is never silently skipped
    with pytest.raises(ValueError, match=f"train.tsv:{line}:"):
        dataset(data, skip_invalid=True)


def test_all_problems_listed_in_one_message(tmp_path):
    data = good_corpus(tmp_path)
    l1 = append_line(data, "wav/missing.wav\t9000")
    l2 = add_wav(data, "short", tone()[:100])
    with pytest.raises(ValueError) as err:
        dataset(data)
    msg = str(err.value)
    assert "2 invalid manifest line(s)" in msg
    assert f"train.tsv:{l1}:" in msg and f"train.tsv:{l2}:" in msg


# --------------------------------------------------------------------------- read-time checks
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_samples_stop_with_line(tmp_path, bad):
    data = good_corpus(tmp_path)
    audio = tone().astype(np.float32)
    audio[100] = bad
    line = add_wav(data, "nonfinite", audio, subtype="FLOAT")
    ds = dataset(data)  # header is fine: caught when read
    with pytest.raises(RuntimeError) as err:
        ds[4]
    msg = str(err.value)
    assert f"train.tsv:{line}:" in msg and "nonfinite.wav" in msg and "NaN or inf" in msg, msg


# --------------------------------------------------------------------------- skip-and-count
def test_skip_invalid_counts_reasons_and_batch_trains(tmp_path, caplog):
    data = good_corpus(tmp_path)
    append_line(data, "wav/missing.wav\t9000")
    (data / "wav/garbage.wav").write_bytes(os.urandom(4000))
    append_line(data, "wav/garbage.wav\t9000")
    add_wav(data, "short", tone()[:200])
    add_wav(data, "rate8k", tone(0.5, 8000), sr=8000)
    add_wav(data, "stereo", np.stack([tone(), tone()], axis=1))
    audio = tone()
    add_wav(data, "miscounted", audio, manifest_samples=len(audio) + 5)
    nan_audio = tone().astype(np.float32)
    nan_audio[10] = np.nan
    nan_line = add_wav(data, "nonfinite", nan_audio, subtype="FLOAT")

    with caplog.at_level(logging.WARNING):
        ds = dataset(data, skip_invalid=True)
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "skipping 6 invalid line(s)" in warning, warning
    # counted per kind: the two unreadable lines (missing + garbage) are one kind
    assert "'unreadable': 2" in warning, warning
    for reason in ("file not found", "unreadable audio", "receptive field", "sample rate 8000 Hz",
                   "2 channels", "manifest says"):
        assert reason in warning, (reason, warning)
    # the 4 good clips + the NaN one (only detectable when read) survive
    assert len(ds) == 5

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert ds.read_failures == 1
    assert sum(it["source"] is None for it in items) == 1
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert f"train.tsv:{nan_line}:" in warning and "NaN or inf" in warning, warning
    batch = ds.collater(items)
    assert batch["net_input"]["source"].shape[0] == 4  # the bad clip left the batch
    train_one_batch(ds)


def test_task_load_dataset_uses_checks(tmp_path):
    """The same policy through BirqPretrainingTask.load_dataset and its config flags."""
    from omegaconf import OmegaConf

    from birq_fairseq.tasks.birq_pretraining import BirqPretrainingConfig, BirqPretrainingTask

    def task_with(**kw):  # as fairseq builds it: a structured DictConfig
        return BirqPretrainingTask.setup_task(
            OmegaConf.structured(BirqPretrainingConfig(data=str(data), min_sample_size=0, tpu=False, **kw)))

    data = good_corpus(tmp_path)
    line = add_wav(data, "rate8k", tone(0.5, 8000), sr=8000)
    task = task_with()
    with pytest.raises(ValueError, match=f"train.tsv:{line}: wav/rate8k.wav: sample rate 8000 Hz"):
        task.load_dataset("train")
    task = task_with(skip_invalid_audio=True)
    task.load_dataset("train")
    assert len(task.datasets["train"]) == 4
    task = task_with(resample_audio=True)
    task.load_dataset("train")
    assert len(task.datasets["train"]) == 5


# --------------------------------------------------------------------------- console script
@pytest.mark.e2e
def test_console_script_names_file_and_line(tmp_path):
    data = good_corpus(tmp_path, n=3)
    write_manifest(str(data), "valid", 1, seed=1, min_seconds=0.5, max_seconds=0.6)
    line = append_line(data, "wav/not_there.wav\t16000")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "fairseq-hydra-train"),
         "--config-dir", str(REPO / "examples/pretrain"), "--config-name", "tiny_birq",
         f"common.user_dir={REPO / 'birq_fairseq'}", f"task.data={data}",
         f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}",
         "optimization.max_update=1"],
        capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"{data / 'train.tsv'}:{line}: wav/not_there.wav: file not found" in out, out[-3000:]
    assert "task.skip_invalid_audio=true" in out
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
