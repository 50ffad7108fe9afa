"""SUPERB-style frozen evaluation: phoneme recognition (PER) and characters (CER / WER).

    birq-fairseq superb --upstream CKPT|fbank --data DATA --train finetune --valid valid \\
        --test test_seen test_unseen [--task pr asr] [--downstream linear bilstm] \\
        [--epochs 40] [--cache DIR] [--json superb.json] [--device cuda]

As SUPERB (Yang et al. 2021) and s3prl do: the upstream is frozen; all its hidden states
(:mod:`birq_fairseq.upstream`: the encoder input and every layer's output, or the stacked
filterbank for ``fbank``) go through a learnable softmax-weighted sum (s3prl's
``Featurizer``: weights start equal, no layer norm unless ``--normalize-layers``) into a
small downstream trained with CTC and decoded greedily (best path, repeats merged, blanks
removed):

- ``linear``: one linear layer per frame (SUPERB's PR downstream);
- ``bilstm``: SUPERB's ASR downstream, 2 bidirectional LSTM layers (``--lstm-dim`` units per
  direction, 1024 in SUPERB), dropout 0.2 after each, then a linear layer.

Tasks, on a fairseq manifest directory (``<split>.tsv`` and labels):

- ``pr``: phonemes, ``<split>.phn`` (``manifests/make_labels.py --phonemes``), scored as PER:
  phoneme edit distance over reference phonemes;
- ``asr``: characters, ``<split>.ltr`` (letters, ``|`` between words), scored as CER
  (edit distance over the characters of the word string, spaces included, as the demo's
  CER) and WER.

The vocabulary is ``dict.phn.txt`` / ``dict.ltr.txt`` when ``DATA`` holds it, else the
symbols of the training labels; CTC's blank is index 0. The downstream trains on ``--train``
and is scored on ``--valid`` every epoch; the epoch with the lowest valid error (PER, or CER)
is kept (``--patience`` stops after that many epochs without improvement) and only then
scored on each ``--test`` split: nothing is chosen on test.

Features are extracted once per upstream and split and cached under ``--cache``
(``<cache>/<checkpoint name>-<key>/<split>-<key>.npy``), keyed by the checkpoint's absolute
path, modification time and size, the layer set and the manifest's path, modification time
and size: every task, downstream and rerun reuses them, and a retrained checkpoint (new
mtime) is extracted again. :func:`run_superb` also takes an already-built upstream object
(examples/reference/speechbrain_bestrq.py), keyed by its class and its checkpoint's identity.
"""

import copy
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import editdistance
import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F

from birq_fairseq import upstream as upstreams
from birq_fairseq.data.labels import letters_to_words, read_dictionary, read_manifest
from birq_fairseq.features import NpyRowWriter

logger = logging.getLogger(__name__)

FEATURE_FORMAT = 1  # bump when what is cached changes meaning
TASKS = ("pr", "asr")
DOWNSTREAMS = ("linear", "bilstm")
LABEL_EXT = {"pr": "phn", "asr": "ltr"}
SELECTION_METRIC = {"pr": "per", "asr": "cer"}
DEFAULT_LR = {"linear": 1e-2, "bilstm": 1e-3}
DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "birq_fairseq",
                             "superb")


# --------------------------------------------------------------------------- data
@dataclass
class Split:
    """One manifest split: audio files and sample counts in manifest order."""

    name: str
    tsv: str
    paths: List[str]
    num_samples: List[int]

    @classmethod
    def read(cls, data: str, name: str) -> "Split":
        tsv = os.path.join(data, f"{name}.tsv")
        if not os.path.isfile(tsv):
            raise FileNotFoundError(f"manifest not found: {tsv}")
        manifest = read_manifest(tsv)
        if len(manifest) == 0:
            raise ValueError(f"{tsv}: no utterances")
        return cls(name, tsv, [os.path.join(manifest.root, rel) for rel, _ in manifest.entries],
                   [n for _, n in manifest.entries])


def read_labels(data: str, split: str, ext: str, expected: int) -> List[List[str]]:
    """Token lists of ``DATA/<split>.<ext>``, one line per manifest entry (space-separated symbols)."""
    path = os.path.join(data, f"{split}.{ext}")
    if not os.path.isfile(path):
        hint = (f": make it with python manifests/make_labels.py {data}/{split}.tsv --transcripts "
                f"{data}/{split}.wrd --phonemes" if ext == "phn" else "")
        raise FileNotFoundError(f"labels not found: {path}{hint}")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    if len(lines) != expected:
        raise ValueError(f"{path}: {len(lines)} lines but {data}/{split}.tsv has {expected} utterances")
    tokens = [line.split() for line in lines]
    for lineno, t in enumerate(tokens, start=1):
        if not t:
            raise ValueError(f"{path}:{lineno}: empty label line")
    return tokens


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    """A mono float32 waveform; errors name the file."""
    try:
        wav, sr = sf.read(path, dtype="float32")
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/FileNotFoundError
        raise ValueError(f"{path}: unreadable audio ({e})") from e
    if sr != sample_rate:
        raise ValueError(f"{path}: sample rate {sr} Hz; the upstream expects {sample_rate} Hz")
    if wav.ndim == 2:
        wav = wav.mean(-1)
    if not np.isfinite(wav).all():
        raise ValueError(f"{path}: audio contains NaN or inf samples")
    return wav


class Vocabulary:
    """Symbols <-> CTC classes: 0 is the blank, symbol i of the dictionary is class i + 1."""

    def __init__(self, symbols: Sequence[str], source: str):
        self.symbols = list(symbols)
        self.source = source
        self.index = {s: i + 1 for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:  # classes, blank included
        return len(self.symbols) + 1

    @classmethod
    def for_task(cls, data: str, ext: str, train_labels: List[List[str]]) -> "Vocabulary":
        path = os.path.join(data, f"dict.{ext}.txt")
        if os.path.isfile(path):
            return cls(read_dictionary(path), path)
        counts = Counter(t for line in train_labels for t in line)
        return cls(sorted(counts, key=lambda s: (-counts[s], s)), "the training labels")

    def encode(self, tokens: List[str], where: str) -> List[int]:
        try:
            return [self.index[t] for t in tokens]
        except KeyError as e:
            raise ValueError(f"{where}: symbol {e.args[0]!r} is not in the vocabulary ({self.source})") from None

    def decode(self, classes: Sequence[int]) -> List[str]:
        return [self.symbols[c - 1] for c in classes if c > 0]


# --------------------------------------------------------------------------- features and their cache
class SplitFeatures:
    """Cached hidden states of one split: ``utterance(i)`` -> (T_i, N, D) float32 array.

    Stored as one .npy of rows (frames, N * D), memory-mapped, and an index (utterances, 2)
    of (first row, frames) in manifest order.
    """

    def __init__(self, npy: str, index: str, num_states: int, dim: int):
        self.rows = np.load(npy, mmap_mode="r")
        self.index = np.load(index)
        self.num_states, self.dim = num_states, dim
        if self.rows.shape[1] != num_states * dim or int(self.index[:, 1].sum()) != self.rows.shape[0]:
            raise ValueError(f"{npy}: inconsistent with {index}; delete both to extract again")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        return self.index[:, 1]

    def utterance(self, i: int) -> np.ndarray:
        start, frames = self.index[i]
        # a copy: the rows are a read-only memory map, which torch will not wrap
        return np.array(self.rows[start:start + frames]).reshape(frames, self.num_states, self.dim)

    def batch(self, ids: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (states (B, T, N, D) zero-padded, lengths (B,))."""
        lengths = torch.tensor([int(self.index[i, 1]) for i in ids])
        out = torch.zeros(len(ids), int(lengths.max()), self.num_states, self.dim)
        for b, i in enumerate(ids):
            out[b, : lengths[b]] = torch.from_numpy(self.utterance(i))
        return out, lengths


def _file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


class FeatureCache:
    """Where one upstream's features live: ``<root>/<name>-<key of upstream and layers>/``.

    ``upstream``: ``"fbank"``, a checkpoint path, or an already-built
    :class:`~birq_fairseq.upstream.FrozenUpstream` (e.g. a model this package does not load);
    such an object is keyed by its class and its ``path``: the checkpoint file's identity
    when ``path`` is a file, else ``path`` itself, which must then change whenever the
    weights do.
    """

    def __init__(self, root: str, upstream, layers: Optional[Sequence[int]]):
        if isinstance(upstream, upstreams.FrozenUpstream):
            path = str(upstream.path)
            kind = f"{type(upstream).__module__}.{type(upstream).__qualname__}"
            self.identity = {"upstream": _file_identity(path) if os.path.isfile(path) else path, "class": kind}
            name = os.path.splitext(os.path.basename(path))[0]
        elif upstream == upstreams.FBANK:
            self.identity = {"upstream": upstreams.FBANK, "n_mels": 80, "normalization": "utterance"}
            name = upstreams.FBANK
        else:
            self.identity = {"upstream": _file_identity(upstream)}
            name = os.path.splitext(os.path.basename(upstream))[0]
        self.identity.update(layers=None if layers is None else sorted(layers), format=FEATURE_FORMAT)
        self.dir = os.path.join(root, f"{name}-{_digest(self.identity)}")

    def paths(self, split: Split) -> Tuple[str, str, str]:
        stem = os.path.join(self.dir, f"{split.name}-{_digest(_file_identity(split.tsv))}")
        return stem + ".npy", stem + ".idx.npy", stem + ".json"

    def load(self, split: Split) -> Optional[SplitFeatures]:
        npy, idx, meta = self.paths(split)
        if not os.path.isfile(meta):  # written last: no meta, no finished extraction
            return None
        with open(meta) as f:
            info = json.load(f)
        feats = SplitFeatures(npy, idx, info["num_states"], info["dim"])
        if len(feats) != len(split.paths):
            raise ValueError(f"{npy}: {len(feats)} utterances cached, {split.tsv} has {len(split.paths)}; "
                             "delete the cache folder to extract again")
        return feats

    @torch.no_grad()
    def extract(self, split: Split, upstream, layers: Optional[Sequence[int]], device: torch.device,
                batch_size: int = 8) -> SplitFeatures:
        """Run ``upstream`` over the split (length-sorted batches) and write the cache files.

        Rows are written in processing order; the index puts them back in manifest order.
        Files are written under ``.partial<pid>`` names (two runs sharing a cache do not mix
        their rows) and renamed, the meta file last.
        """
        os.makedirs(self.dir, exist_ok=True)
        npy, idx, meta = self.paths(split)
        upstream = upstream.to(device).eval()
        order = sorted(range(len(split.paths)), key=lambda i: split.num_samples[i])
        index = np.zeros((len(split.paths), 2), dtype=np.int64)
        partial = f".partial{os.getpid()}"
        writer = NpyRowWriter(npy + partial)
        rows = 0
        num_states = dim = None
        try:
            for start in range(0, len(order), batch_size):
                ids = order[start:start + batch_size]
                wavs = [torch.from_numpy(read_audio(split.paths[i], upstream.sample_rate)).to(device) for i in ids]
                source, padding_mask = upstreams.collate(wavs, upstream.min_samples, upstream.normalize)
                states, lengths = upstream(source, padding_mask if padding_mask.any() else None)
                if layers is not None:
                    states = [states[k] for k in layers]
                stacked = torch.stack(states, dim=2).float().cpu()  # (B, T', N, D)
                num_states, dim = stacked.shape[2], stacked.shape[3]
                for b, i in enumerate(ids):
                    frames = int(lengths[b])
                    writer.append(stacked[b, :frames].reshape(frames, -1).numpy())
                    index[i] = (rows, frames)
                    rows += frames
        except BaseException:
            writer.close()
            os.remove(npy + partial)  # an unreadable file, say: leave no half-written rows behind
            raise
        writer.close()
        np.save(idx + partial + ".npy", index)
        os.replace(npy + partial, npy)
        os.replace(idx + partial + ".npy", idx)
        info = dict(self.identity, split=split.name, manifest=_file_identity(split.tsv), num_states=num_states,
                    dim=dim, frames=rows, utterances=len(split.paths))
        with open(meta + partial, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(meta + partial, meta)
        return SplitFeatures(npy, idx, num_states, dim)


# --------------------------------------------------------------------------- the downstream
class WeightedSum(nn.Module):
    """s3prl's Featurizer: softmax(w)-weighted sum of N hidden states; (B, T, N, D) -> (B, T, D)."""

    def __init__(self, num_states: int, normalize: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))  # equal weights at the start
        self.normalize = normalize

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            states = F.layer_norm(states, states.shape[-1:])
        return torch.einsum("btnd,n->btd", states, F.softmax(self.weights, dim=-1))

    def layer_weights(self) -> List[float]:
        return F.softmax(self.weights.detach(), dim=-1).cpu().tolist()


class BiLSTM(nn.Module):
    """SUPERB's ASR downstream body: 2 bidirectional LSTM layers, dropout after each.

    (B, T, D), lengths (B,) -> (B, T, 2 * hidden); packed, so each direction starts at the
    utterance's own end, not in the padding.
    """

    def __init__(self, input_dim: int, hidden: int = 1024, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.lstms = nn.ModuleList(nn.LSTM(input_dim if i == 0 else 2 * hidden, hidden, batch_first=True,
                                           bidirectional=True) for i in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.output_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        total = x.size(1)
        for lstm in self.lstms:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=total)
            x = self.dropout(x)
        return x


class CTCProbe(nn.Module):
    """Weighted sum of hidden states -> downstream -> CTC log-probabilities.

    forward(states (B, T, N, D), lengths (B,)) -> log_probs (B, T, classes), blank = 0.
    """

    def __init__(self, num_states: int, dim: int, classes: int, downstream: str = "linear",
                 lstm_dim: int = 1024, normalize: bool = False):
        super().__init__()
        if downstream not in DOWNSTREAMS:
            raise ValueError(f"--downstream must be one of {', '.join(DOWNSTREAMS)}, got {downstream!r}")
        self.featurizer = WeightedSum(num_states, normalize)
        self.body = BiLSTM(dim, lstm_dim) if downstream == "bilstm" else None
        self.proj = nn.Linear(self.body.output_dim if self.body is not None else dim, classes)
        self.description = (f"bilstm: 2 x BiLSTM {lstm_dim} per direction, dropout 0.2, linear"
                            if downstream == "bilstm" else "linear: one linear layer per frame")

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.featurizer(states)
        if self.body is not None:
            x = self.body(x, lengths)
        return F.log_softmax(self.proj(x), dim=-1)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
    """Best path per utterance: argmax per frame, repeats merged, blanks (0) removed."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = torch.unique_consecutive(best[b, :n])
        out.append([int(c) for c in path if c != 0])
    return out


# --------------------------------------------------------------------------- scoring
def score(task: str, refs: List[List[str]], hyps: List[List[str]]) -> Dict[str, float]:
    """PER for ``pr``; CER and WER for ``asr`` (letters with ``|`` word boundaries), in percent."""
    if task == "pr":
        errors = sum(editdistance.eval(r, h) for r, h in zip(refs, hyps))
        total = sum(len(r) for r in refs)
        return {"per": 100.0 * errors / max(total, 1), "phoneme_errors": errors, "phonemes": total,
                "utterances": len(refs)}
    char_err = char_tot = word_err = word_tot = 0
    for r, h in zip(refs, hyps):
        ref, hyp = letters_to_words(" ".join(r)), letters_to_words(" ".join(h))
        char_err += editdistance.eval(ref, hyp)
        char_tot += len(ref)
        word_err += editdistance.eval(ref.split(), hyp.split())
        word_tot += len(ref.split())
    return {"cer": 100.0 * char_err / max(char_tot, 1), "wer": 100.0 * word_err / max(word_tot, 1),
            "char_errors": char_err, "chars": char_tot, "word_errors": word_err, "words": word_tot,
            "utterances": len(refs)}


@torch.no_grad()
def evaluate_split(probe: CTCProbe, feats: SplitFeatures, refs: List[List[str]], vocab: Vocabulary, task: str,
                   device: torch.device, batch_size: int) -> Dict[str, float]:
    probe.eval()
    hyps: List[List[str]] = [[] for _ in range(len(feats))]
    for start in range(0, len(feats), batch_size):
        ids = list(range(start, min(start + batch_size, len(feats))))
        states, lengths = feats.batch(ids)
        decoded = greedy_decode(probe(states.to(device), lengths.to(device)), lengths)
        for i, classes in zip(ids, decoded):
            hyps[i] = vocab.decode(classes)
    return score(task, refs, hyps)


# --------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 16
    lr: Optional[float] = None  # None: DEFAULT_LR of the downstream
    lstm_dim: int = 1024
    normalize_layers: bool = False
    patience: int = 0  # 0: train all epochs
    clip_norm: float = 1.0  # s3prl's gradient_clipping
    seed: int = 1


@dataclass
class ProbeResult:
    task: str
    downstream: str
    description: str
    parameters: int
    lr: float
    best_epoch: int
    epochs_run: int
    valid: Optional[Dict[str, float]]
    test: Dict[str, Dict[str, float]]
    layer_weights: List[float]
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_probe(task: str, downstream: str, train: SplitFeatures, train_labels: List[List[str]],
                valid: Optional[SplitFeatures], valid_labels: Optional[List[List[str]]], vocab: Vocabulary,
                cfg: TrainConfig, device: torch.device, where: str = "train") -> Tuple[CTCProbe, dict]:
    """Train a CTC probe; keep the epoch with the lowest valid error (the last one without valid).

    Returns the probe (in eval mode, on ``device``) and ``{"history", "best_epoch", "valid"}``.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    targets = [torch.tensor(vocab.encode(t, f"{where} line {i + 1}")) for i, t in enumerate(train_labels)]
    too_long = sum(1 for i, t in enumerate(targets) if len(t) > int(train.lengths[i]))
    if too_long:
        logger.warning(f"{too_long} training utterances have more labels than frames: CTC cannot align them "
                       "(their loss is zeroed)")
    probe = CTCProbe(train.num_states, train.dim, len(vocab), downstream, cfg.lstm_dim, cfg.normalize_layers)
    probe.to(device)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[downstream]
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    metric = SELECTION_METRIC[task]
    history, best, best_epoch, best_state, stale = [], None, 0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        probe.train()
        order = rng.permutation(len(train))
        losses, utterances = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            ids = order[start:start + cfg.batch_size].tolist()
            states, lengths = train.batch(ids)
            log_probs = probe(states.to(device), lengths.to(device))
            tgt = [targets[i] for i in ids]
            loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(tgt).to(device), lengths.to(device),
                              torch.tensor([len(t) for t in tgt], device=device), blank=0, reduction="mean",
                              zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), cfg.clip_norm)
            optimizer.step()
            losses += loss.detach().item() * len(ids)
            utterances += len(ids)
        entry = {"epoch": epoch, "train_loss": losses / utterances}  # mean CTC loss per label, over the epoch
        if valid is not None:
            result = evaluate_split(probe, valid, valid_labels, vocab, task, device, cfg.batch_size)
            entry[f"valid_{metric}"] = result[metric]
            if best is None or result[metric] < best[metric]:
                best, best_epoch, best_state, stale = result, epoch, copy.deepcopy(probe.state_dict()), 0
            else:
                stale += 1
        history.append(entry)
        logger.info(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
        if cfg.patience and stale >= cfg.patience:
            break
    if best_state is not None:
        probe.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    return probe.eval(), {"history": history, "best_epoch": best_epoch, "valid": best, "lr": lr}


# --------------------------------------------------------------------------- the evaluation
class Evaluation:
    """Features of every split for one upstream, extracted (or read from the cache) once.

    ``upstream``: ``"fbank"``, a BiRQ checkpoint path (loaded on first need), or an
    already-built :class:`~birq_fairseq.upstream.FrozenUpstream` with its documented
    attributes (how examples/reference/ scores encoders this package does not load).
    """

    def __init__(self, upstream, data: str, cache: str, layers: Optional[Sequence[int]] = None,
                 device: str = "cpu", extract_batch_size: int = 8):
        built = isinstance(upstream, upstreams.FrozenUpstream)
        if not built and upstream != upstreams.FBANK and not os.path.isfile(upstream):
            raise FileNotFoundError(f"upstream checkpoint not found: {upstream} "
                                    f"(or pass '{upstreams.FBANK}' for the filterbank)")
        if layers is not None and (not layers or min(layers) < 0):
            raise ValueError(f"--layers {list(layers)}: give hidden-state indices >= 0 (0 = the encoder input)")
        self.upstream_spec, self.data = (str(upstream.path) if built else upstream), data
        self.layers = None if layers is None else sorted(set(layers))  # one order: one cache key, one layout
        self.cache = FeatureCache(cache, upstream, self.layers)
        self.device = torch.device(device)
        self.extract_batch_size = extract_batch_size
        self._upstream = None
        if built:
            self._set_upstream(upstream)
        self._features: Dict[str, SplitFeatures] = {}
        self.cache_use: Dict[str, str] = {}
        self.upstream_info: Dict[str, object] = {}

    def upstream(self):
        """The upstream model, loaded on first need (never when every split is cached)."""
        if self._upstream is None:
            self._set_upstream(upstreams.load_upstream(self.upstream_spec))
        return self._upstream

    def _set_upstream(self, upstream) -> None:
        n = upstream.num_hidden_states
        if self.layers is not None and self.layers[-1] >= n:
            raise ValueError(f"--layers {self.layers}: the upstream has hidden states 0..{n - 1}")
        self._upstream = upstream

    def features(self, split: Split) -> SplitFeatures:
        if split.name not in self._features:
            feats = self.cache.load(split)
            if feats is None:
                t = time.time()
                feats = self.cache.extract(split, self.upstream(), self.layers, self.device, self.extract_batch_size)
                self.cache_use[split.name] = "extracted"
                logger.info(f"{split.name}: features extracted in {time.time() - t:.1f}s -> {self.cache.dir}")
            else:
                self.cache_use[split.name] = "cached"
            self._features[split.name] = feats
        return self._features[split.name]


def run_superb(upstream, data: str, train_split: str, valid_split: Optional[str], test_splits: Sequence[str],
               tasks: Sequence[str] = TASKS, downstreams: Sequence[str] = ("linear",),
               cfg: Optional[TrainConfig] = None, cache: str = DEFAULT_CACHE, layers: Optional[Sequence[int]] = None,
               device: str = "cpu", extract_batch_size: int = 8) -> dict:
    """The frozen evaluation of one upstream: every task x downstream, scored on each test split.

    ``upstream``: ``"fbank"``, a checkpoint path or a built ``FrozenUpstream`` (see :class:`Evaluation`).
    Returns a JSON-able dict (see :func:`format_table` for the printed form).
    """
    cfg = cfg or TrainConfig()
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"--task must be among {', '.join(TASKS)}, got {task!r}")
    for name in downstreams:
        if name not in DOWNSTREAMS:
            raise ValueError(f"--downstream must be among {', '.join(DOWNSTREAMS)}, got {name!r}")
    if train_split in test_splits or (valid_split and valid_split in test_splits):
        raise ValueError("a test split must not be the train or valid split: nothing is chosen on test")
    ev = Evaluation(upstream, data, cache, layers, device, extract_batch_size)
    splits = {name: Split.read(data, name) for name in [train_split, valid_split, *test_splits] if name}
    # every label file is checked before any feature is extracted
    labels = {(task, name): read_labels(data, name, LABEL_EXT[task], len(split.paths))
              for task in tasks for name, split in splits.items()}
    feats = {name: ev.features(split) for name, split in splits.items()}
    first = feats[train_split]
    result = {
        "upstream": ev.upstream_spec, "data": os.path.abspath(data), "train": train_split, "valid": valid_split,
        "test": list(test_splits), "hidden_states": first.num_states, "hidden_size": first.dim,
        "layers": ev.layers if ev.layers is not None else list(range(first.num_states)),
        "cache": {"dir": ev.cache.dir, "splits": dict(ev.cache_use)}, "config": dict(vars(cfg)), "runs": [],
    }
    dev = torch.device(device)
    for task in tasks:
        ext = LABEL_EXT[task]
        vocab = Vocabulary.for_task(data, ext, labels[(task, train_split)])
        for name in downstreams:
            t = time.time()
            probe, info = train_probe(
                task, name, feats[train_split], labels[(task, train_split)],
                feats.get(valid_split) if valid_split else None,
                labels.get((task, valid_split)) if valid_split else None, vocab, cfg, dev,
                where=os.path.join(data, f"{train_split}.{ext}"))
            tests = {s: evaluate_split(probe, feats[s], labels[(task, s)], vocab, task, dev, cfg.batch_size)
                     for s in test_splits}
            run = ProbeResult(task=task, downstream=name, description=probe.description,
                              parameters=sum(p.numel() for p in probe.parameters()), lr=info["lr"],
                              best_epoch=info["best_epoch"], epochs_run=len(info["history"]), valid=info["valid"],
                              test=tests, layer_weights=probe.featurizer.layer_weights(), history=info["history"],
                              seconds=time.time() - t)
            result["runs"].append(vars(run))
            result.setdefault("vocabulary", {})[task] = {"symbols": len(vocab.symbols), "source": vocab.source}
    return result


def format_table(result: dict) -> str:
    """A short table: one row per task x downstream, valid and test errors, and the layer weights."""
    head = (f"upstream: {result['upstream']} ({result['hidden_states']} hidden states x {result['hidden_size']}); "
            f"train {result['train']}, valid {result['valid'] or '-'}")
    splits = ["valid"] + result["test"]
    rows = [head, "task  downstream  " + "  ".join(f"{s:>18}" for s in splits) + "  best epoch"]

    def cell(scores: Optional[dict], task: str) -> str:
        if not scores:
            return f"{'-':>18}"
        if task == "pr":
            return f"{'PER ' + format(scores['per'], '.1f'):>18}"
        return f"{'CER ' + format(scores['cer'], '.1f') + ' WER ' + format(scores['wer'], '.1f'):>18}"

    for run in result["runs"]:
        cells = [cell(run["valid"], run["task"])] + [cell(run["test"][s], run["task"]) for s in result["test"]]
        rows.append(f"{run['task']:<5} {run['downstream']:<10}  " + "  ".join(cells) +
                    f"  {run['best_epoch']}/{run['epochs_run']}")
    for run in result["runs"]:
        weights = " ".join(f"{w:.2f}" for w in run["layer_weights"])
        rows.append(f"layer weights {run['task']}/{run['downstream']}: {weights}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- command line
def add_parser(sub) -> None:
    p = sub.add_parser("superb", help="SUPERB-style frozen evaluation: weighted layers -> CTC downstream, "
                       "phonemes (PER) and characters (CER/WER)")
    p.add_argument("--upstream", "--path", dest="upstream", required=True,
                   help="BiRQ checkpoint (pretraining, or finetuned wav2vec_ctc from one), or 'fbank' for the "
                   "log-mel filterbank stacked to 40 ms (the no-upstream row)")
    p.add_argument("--data", required=True, help="directory with <split>.tsv, <split>.phn / .ltr and optionally "
                   "dict.phn.txt / dict.ltr.txt")
    p.add_argument("--train", required=True, help="labelled split the downstream learns from (e.g. finetune)")
    p.add_argument("--valid", default="valid", help="split for choosing the epoch (default valid; '' for none)")
    p.add_argument("--test", nargs="+", required=True, help="split(s) scored with the chosen downstream")
    p.add_argument("--task", nargs="+", default=list(TASKS), choices=TASKS,
                   help="pr: phonemes, PER; asr: characters, CER and WER (default both)")
    p.add_argument("--downstream", nargs="+", default=["linear"], choices=DOWNSTREAMS,
                   help="linear (SUPERB's PR) and/or bilstm (SUPERB's ASR: 2 x BiLSTM) (default linear)")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="hidden states to weigh (0 = encoder input, L = last layer; default all)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs over --train (default 40)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per update (default 16)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate (default {DEFAULT_LR['linear']:g} linear, "
                   f"{DEFAULT_LR['bilstm']:g} bilstm)")
    p.add_argument("--lstm-dim", type=int, default=1024, help="BiLSTM units per direction (default 1024, SUPERB's)")
    p.add_argument("--normalize-layers", action="store_true",
                   help="layer-norm each hidden state before the weighted sum (s3prl's "
                   "--upstream_feature_normalize; SUPERB does not)")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many epochs without a better valid error (default 0: never)")
    p.add_argument("--seed", type=int, default=1, help="seed of the downstream's initialisation and batches")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"feature cache directory (default {DEFAULT_CACHE})")
    p.add_argument("--extract-batch-size", type=int, default=8, help="utterances per upstream batch (default 8)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the results (with per-epoch history) here")


def run(args) -> int:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lstm_dim=args.lstm_dim,
                      normalize_layers=args.normalize_layers, patience=args.patience, seed=args.seed)
    result = run_superb(args.upstream, args.data, args.train, args.valid or None, args.test, args.task,
                        args.downstream, cfg, args.cache, args.layers, args.device, args.extract_batch_size)
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"written: {args.json}")
    return 0
