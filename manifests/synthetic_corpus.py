"""Small synthetic audio corpora written as fairseq manifests (no TTS needed).

Speech-like harmonic audio for the tests (tests/audio_fixtures.py re-exports this), the
benchmarks' label-cost part and the GPU check (examples/benchmarks). Needs numpy and soundfile.
"""

import os
from typing import List

import numpy as np
import soundfile as sf


def synth_utterance(rng: np.random.Generator, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Speech-like audio: a few 'syllables', each a harmonic tone with its own pitch and
    spectral tilt, plus a little noise. Enough structure for the quantizers to see classes."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    audio = np.zeros(n)
    bounds = np.sort(rng.choice(np.arange(1, n), size=max(1, int(seconds * 4)), replace=False))
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, n]):
        f0 = rng.uniform(90, 260)
        seg = np.zeros(end - start)
        for h in range(1, 8):
            seg += rng.uniform(0, 1) / h * np.sin(2 * np.pi * f0 * h * t[start:end] + rng.uniform(0, 6.28))
        audio[start:end] = seg * np.hanning(end - start)
    audio += 0.01 * rng.standard_normal(n)
    return (0.3 * audio / (np.abs(audio).max() + 1e-9)).astype(np.float32)


def write_manifest(
    directory: str,
    split: str,
    num_utterances: int,
    seed: int = 0,
    min_seconds: float = 1.0,
    max_seconds: float = 2.0,
    sample_rate: int = 16000,
) -> List[str]:
    """Write wavs under directory/wav/ and directory/{split}.tsv; return relative paths."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "wav"), exist_ok=True)
    rel_paths = []
    lines = [os.path.abspath(directory)]
    for i in range(num_utterances):
        audio = synth_utterance(rng, rng.uniform(min_seconds, max_seconds), sample_rate)
        rel = os.path.join("wav", f"{split}_{i:04d}.wav")
        sf.write(os.path.join(directory, rel), audio, sample_rate, subtype="PCM_16")
        lines.append(f"{rel}\t{len(audio)}")
        rel_paths.append(rel)
    with open(os.path.join(directory, f"{split}.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rel_paths
