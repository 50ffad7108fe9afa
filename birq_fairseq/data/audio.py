"""fairseq's FileAudioDataset with checks that name the manifest line and file at fault.

Policy (documented in the README, "When things go wrong"):
- at load time every manifest line is checked (format, length, and with
  ``check_headers`` the file's header: readable, sample rate, channels, sample count).
  By default any problem stops the run with one message listing every bad line;
  with ``skip_invalid`` the bad lines are dropped and counted per reason in the log.
- clips shorter than ``min_sample_size`` are skipped and counted, as fairseq does;
  clips shorter than the front-end's receptive field are an error (or skipped).
- at read time, a file that cannot be decoded or holds NaN/inf samples raises an
  error naming manifest line and path (or, with ``skip_invalid``, is dropped from its
  batch with a warning and counted).
"""

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import List

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from fairseq.data import FileAudioDataset

logger = logging.getLogger(__name__)


@dataclass
class ManifestProblem:
    line: int  # 1-based line number in the manifest file
    path: str
    kind: str  # short category, counted when skipping
    reason: str
    fatal: bool = False  # a malformed line cannot be skipped: the manifest itself is broken

    def format(self, manifest: str) -> str:
        return f"{manifest}:{self.line}: {self.path}: {self.reason}"


def check_manifest(
    manifest_path: str,
    sample_rate: int,
    min_samples: int,
    check_headers: bool = True,
    allow_resample: bool = False,
    skip_below: int = 0,
) -> List[ManifestProblem]:
    """Check every line of a fairseq audio manifest; return the problems found.

    Lines shorter than ``skip_below`` (fairseq's ``min_sample_size``) are not problems:
    fairseq skips and counts them.
    """
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"manifest not found: {manifest_path}")
    problems = []
    with open(manifest_path) as f:
        root = f.readline().strip()
        if check_headers and not os.path.isdir(root):
            raise ValueError(f"{manifest_path}:1: audio root directory {root!r} does not exist")
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[1].strip().isdigit():
                problems.append(ManifestProblem(lineno, fields[0], "malformed line", "expected 'path<TAB>num_samples', "
                                                f"got {line.strip()!r}", fatal=True))
                continue
            rel_path, size = fields[0], int(fields[1])
            if size < skip_below:
                continue
            if size < min_samples:
                problems.append(ManifestProblem(lineno, rel_path, "too short", f"{size} samples is shorter than the front-end's "
                                                f"receptive field ({min_samples} samples)"))
                continue
            if not check_headers:
                continue
            path = os.path.join(root, rel_path)
            try:
                info = sf.info(path)
            except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/FileNotFoundError
                reason = "file not found" if not os.path.exists(path) else f"unreadable audio ({e})"
                problems.append(ManifestProblem(lineno, rel_path, "unreadable", reason))
                continue
            if info.channels != 1:
                problems.append(ManifestProblem(lineno, rel_path, "not mono", f"{info.channels} channels; expected mono"))
            elif info.samplerate != sample_rate and not allow_resample:
                problems.append(ManifestProblem(lineno, rel_path, "sample rate", f"sample rate {info.samplerate} Hz; expected "
                                                f"{sample_rate} Hz (resample the audio, or set task.resample_audio=true)"))
            elif info.samplerate == sample_rate and info.frames != size:
                problems.append(ManifestProblem(lineno, rel_path, "size mismatch", f"manifest says {size} samples, file has {info.frames}"))
            elif info.frames == 0:
                problems.append(ManifestProblem(lineno, rel_path, "empty", "empty audio"))
    return problems


def report_problems(manifest_path: str, problems: List[ManifestProblem], skip: bool, show: int = 20) -> None:
    if not problems:
        return
    lines = "\n  ".join(p.format(manifest_path) for p in problems[:show])
    more = f"\n  ... and {len(problems) - show} more" if len(problems) > show else ""
    if not skip or any(p.fatal for p in problems):
        raise ValueError(
            f"{len(problems)} invalid manifest line(s) in {manifest_path}:\n  {lines}{more}\n"
            "Fix them, or set task.skip_invalid_audio=true to skip and count them."
        )
    kinds = dict(Counter(p.kind for p in problems))
    logger.warning(f"skipping {len(problems)} invalid line(s) of {manifest_path}: {kinds}\n  {lines}{more}")


class CheckedFileAudioDataset(FileAudioDataset):
    """FileAudioDataset that validates its manifest up front and names the culprit on failure."""

    def __init__(
        self,
        manifest_path: str,
        sample_rate: int,
        min_audio_samples: int,
        check_headers: bool = True,
        skip_invalid: bool = False,
        resample: bool = False,
        **kwargs,
    ):
        problems = check_manifest(manifest_path, sample_rate, min_audio_samples, check_headers, resample,
                                  skip_below=kwargs.get("min_sample_size") or 0)
        report_problems(manifest_path, problems, skip_invalid)
        super().__init__(manifest_path, sample_rate, **kwargs)
        self.manifest_path = manifest_path
        self.skip_invalid = skip_invalid
        self.resample = resample
        self.read_failures = 0
        self._crop_epoch = 1  # fairseq's first epoch; set_epoch updates it
        self._crop_rng = np.random.default_rng(0)  # replaced per batch by collater

        # Map dataset index -> manifest line, dropping lines that failed the checks.
        bad = {p.line - 2 for p in problems}  # 0-based entry index, as fairseq's skipped_indices
        kept = [i for i in range(len(self.sizes) + len(self.skipped_indices)) if i not in self.skipped_indices]
        fnames = self.fnames.to_pylist() if hasattr(self.fnames, "to_pylist") else list(self.fnames)
        keep = [j for j, i in enumerate(kept) if i not in bad]
        self.entry_index = np.array([kept[j] for j in keep], dtype=np.int64)
        self.fnames = [fnames[j] for j in keep]
        self.sizes = self.sizes[keep] if len(keep) else np.zeros(0, dtype=np.int64)
        self.skipped_indices |= bad
        if resample:
            self._rescale_sizes_from_headers()
        if len(self.sizes) == 0:
            raise ValueError(f"{manifest_path}: no usable audio left after checks ({len(problems)} invalid, "
                             f"{len(self.skipped_indices) - len(bad)} shorter than min_sample_size)")
        self.set_bucket_info(self.num_buckets if hasattr(self, "num_buckets") else 0)

    def _rescale_sizes_from_headers(self):
        for i, fn in enumerate(self.fnames):
            info = sf.info(os.path.join(self.root_dir, self.text_compressor.decompress(fn)))
            if info.samplerate != self.sample_rate:
                self.sizes[i] = int(info.frames * self.sample_rate / info.samplerate)

    def where(self, index: int) -> str:
        fn = self.text_compressor.decompress(self.fnames[index])
        return f"{self.manifest_path}:{int(self.entry_index[index]) + 2}: {os.path.join(self.root_dir, fn)}"

    def postprocess(self, feats, curr_sample_rate):
        if self.resample and curr_sample_rate != self.sample_rate:
            feats = AF.resample(feats, curr_sample_rate, self.sample_rate)
            curr_sample_rate = self.sample_rate
        return super().postprocess(feats, curr_sample_rate)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self._crop_epoch = epoch

    def collater(self, samples):
        # fairseq crops clips longer than the batch's shortest with numpy's *global* RNG, which
        # is neither reseeded per update nor checkpointed, so a run resumed mid-epoch would crop
        # differently from an uninterrupted one. Each batch gets its own generator, seeded from
        # (epoch, sample ids); it is not the global one, which fairseq's prefetch thread (where
        # this runs) would share with the training thread.
        ids = [int(s["id"]) for s in samples if s.get("source") is not None]
        self._crop_rng = np.random.default_rng([self._crop_epoch, *ids])
        return super().collater(samples)

    def crop_to_max_size(self, t, target_size, dim=0):
        size = t.size(dim)
        if size <= target_size:
            return t
        start = int(self._crop_rng.integers(0, size - target_size + 1))
        return t.narrow(dim, start, target_size)

    def __getitem__(self, index):
        try:
            item = super().__getitem__(index)
            if not torch.isfinite(item["source"]).all():
                raise ValueError("audio contains NaN or inf samples")
            return item
        except Exception as e:
            message = f"{self.where(index)}: {e}"
            if not self.skip_invalid:
                raise RuntimeError(message) from e
            self.read_failures += 1
            logger.warning(f"skipping unreadable audio ({self.read_failures} so far): {message}")
            return {"id": index, "source": None}
