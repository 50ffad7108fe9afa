"""Layer features of a BiRQ checkpoint, for k-means and probes, in HuBERT's simple_kmeans format.

    birq-fairseq dump-features --path CKPT --data TSV_DIR --split train --layer 6 \\
        --nshard 4 --rank 0 --feat-dir FEATS [--device cuda]

writes ``FEATS/{split}_{rank}_{nshard}.npy`` (every frame of the shard's utterances, float32,
shape (frames, D)) and ``.len`` (frames per utterance, one a line, manifest order): the files
fairseq's ``examples/hubert/simple_kmeans/learn_kmeans.py`` and ``dump_km_label.py`` read. The
shard split and the per-utterance reading (whole utterance, ``--max-chunk`` samples at a
time) follow HuBERT's ``feature_utils.py`` / ``dump_w2v2_feature.py``, which hard-code CUDA;
this runs on ``--device cpu`` or ``cuda``.

Resumable: a shard is written under ``*.partial`` names and renamed when complete (``.npy``
first, then ``.len``), so a finished shard (both files, consistent) is skipped on a rerun, an
interrupted one is redone from its start, and no other shard's files are ever touched.

``--layer N`` counts like HuBERT's dump scripts: the output of transformer layer N (1..L).
In Python that is ``model.extract_features(source, padding_mask, layer=N - 1)["x"]``.
"""

import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import tqdm

from birq_fairseq.data.audio import check_manifest
from birq_fairseq.loading import load_birq_encoder
from birq_fairseq.modules.frontend import min_samples_for_one_step

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the model
def check_output_layer(model, output_layer: Optional[int]) -> None:
    """``output_layer`` is 1-based (HuBERT's dump scripts); None is the encoder's final output."""
    num_layers = len(model.encoder.layers)
    if output_layer is not None and not 1 <= output_layer <= num_layers:
        raise ValueError(f"--layer {output_layer} is outside the encoder: it has {num_layers} layers, "
                         f"so the layer must be in 1..{num_layers}")


class LayerFeatureReader:
    """One layer's features of whole utterances, read from audio files.

    ``get_feats(path, ref_len)`` -> (T', D) float32 tensor on the CPU, T' = 40 ms frames.
    Utterances longer than ``max_chunk`` samples are cut into equal chunks run separately
    (HuBERT's ``max_chunk``: bounds memory; frames near a cut see one side only).
    """

    def __init__(self, model, task_cfg, output_layer: Optional[int], device: str = "cpu",
                 max_chunk: int = 1_600_000):
        check_output_layer(model, output_layer)
        if max_chunk <= 0:
            raise ValueError(f"--max-chunk must be > 0, got {max_chunk}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.output_layer = output_layer
        self.sample_rate = int(task_cfg.sample_rate)
        self.normalize = bool(task_cfg.normalize)
        self.max_chunk = max(max_chunk, min_samples_for_one_step(self.sample_rate))

    def read_audio(self, path: str, ref_len: Optional[int] = None) -> np.ndarray:
        try:
            wav, sr = sf.read(path, dtype="float32")
        except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/FileNotFoundError
            raise ValueError(f"{path}: unreadable audio ({e})") from e
        if sr != self.sample_rate:
            raise ValueError(f"{path}: sample rate {sr} Hz; the model expects {self.sample_rate} Hz")
        if wav.ndim == 2:
            wav = wav.mean(-1)
        if ref_len is not None and abs(ref_len - len(wav)) > 160:
            logger.warning(f"{path}: manifest says {ref_len} samples, file has {len(wav)}")
        if not np.isfinite(wav).all():
            raise ValueError(f"{path}: audio contains NaN or inf samples")
        return wav

    @torch.no_grad()
    def get_feats(self, path: str, ref_len: Optional[int] = None) -> torch.Tensor:
        wav = torch.from_numpy(self.read_audio(path, ref_len)).to(self.device)
        if self.normalize:
            wav = F.layer_norm(wav, wav.shape)
        num_chunks = -(-wav.numel() // self.max_chunk)
        layer = None if self.output_layer is None else self.output_layer - 1
        feats = [self.model.extract_features(source=chunk[None], padding_mask=None, mask=False, layer=layer)["x"][0]
                 for chunk in torch.tensor_split(wav, num_chunks)]
        return torch.cat(feats).float().cpu()


# --------------------------------------------------------------------------- the manifest shard
def shard_range(total: int, nshard: int, rank: int) -> Tuple[int, int]:
    """Lines [start, end) of shard ``rank``: the split of HuBERT's feature_utils.get_shard_range."""
    if not 0 <= rank < nshard:
        raise ValueError(f"--rank {rank} must be in 0..{nshard - 1} (--nshard {nshard})")
    start, end = round(total / nshard * rank), round(total / nshard * (rank + 1))
    if start >= end:
        raise ValueError(f"shard {rank} of {nshard} is empty: the manifest has only {total} utterances")
    return start, end


def shard_utterances(tsv: str, nshard: int, rank: int, sample_rate: int) -> List[Tuple[str, int]]:
    """``(audio path, num_samples)`` of the shard's manifest lines, each line checked first.

    Every problem of the shard's lines stops with ``tsv:line: path: reason`` before anything
    is written; no line is skipped (labels must stay aligned with the manifest).
    """
    with open(tsv) as f:
        root = f.readline().strip()
        lines = [line.rstrip("\n") for line in f]
    start, end = shard_range(len(lines), nshard, rank)
    first_line, last_line = start + 2, end + 1  # 1-based manifest lines; line 1 is the root
    problems = [p for p in check_manifest(tsv, sample_rate, min_samples_for_one_step(sample_rate))
                if first_line <= p.line <= last_line]
    if problems:
        listed = "\n  ".join(p.format(tsv) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} invalid manifest line(s) in shard {rank} of {nshard} of {tsv}:\n"
                         f"  {listed}{more}")
    result = []
    for line in lines[start:end]:
        rel_path, num_samples = line.split("\t")
        result.append((os.path.join(root, rel_path), int(num_samples)))
    return result


# --------------------------------------------------------------------------- the files
class NpyRowWriter:
    """Appends float32 rows (N_i, D) to one .npy file whose final shape is unknown up front.

    numpy's .npy header leaves room for a 21-digit first dimension (``GROWTH_AXIS_MAX_DIGITS``,
    the space npy-append-array relies on too), so the header written with 0 rows is rewritten
    in place with the final count on :meth:`close`: no second pass over the data.
    """

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "wb")
        self.rows = 0
        self.dim = None
        self.header_len = None

    def _write_header(self):
        self.file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (self.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self.file, header)
        if self.header_len is None:
            self.header_len = self.file.tell()
        elif self.file.tell() != self.header_len:  # cannot happen below 10**21 rows
            raise RuntimeError(f"{self.path}: .npy header grew; cannot rewrite it in place")

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.dim is None:
            self.dim = rows.shape[1]
            self._write_header()
        elif rows.shape[1] != self.dim:
            raise ValueError(f"{self.path}: rows of width {rows.shape[1]} after width {self.dim}")
        self.file.seek(0, os.SEEK_END)
        self.file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        if self.dim is not None:
            self._write_header()
        self.file.close()


def shard_paths(feat_dir: str, split: str, nshard: int, rank: int) -> Tuple[str, str]:
    """HuBERT's names: ``{feat_dir}/{split}_{rank}_{nshard}.npy`` and ``.len``."""
    stem = os.path.join(feat_dir, f"{split}_{rank}_{nshard}")
    return stem + ".npy", stem + ".len"


def finished_shard(feat_dir: str, split: str, nshard: int, rank: int, num_utterances: int) -> bool:
    """Both files there, one length per utterance, and the lengths add up to the .npy's rows."""
    feat_path, leng_path = shard_paths(feat_dir, split, nshard, rank)
    if not (os.path.isfile(feat_path) and os.path.isfile(leng_path)):
        return False
    try:
        with open(leng_path) as f:
            lengths = [int(line) for line in f]
        rows = np.load(feat_path, mmap_mode="r").shape[0]
    except (ValueError, OSError) as e:
        logger.warning(f"redoing shard {rank} of {nshard}: {feat_path} / {leng_path} unreadable ({e})")
        return False
    if len(lengths) != num_utterances or sum(lengths) != rows:
        logger.warning(f"redoing shard {rank} of {nshard}: {leng_path} lists {len(lengths)} utterances and "
                       f"{sum(lengths)} frames; the shard has {num_utterances} utterances, {feat_path} {rows} frames")
        return False
    return True


def dump_shard(reader: LayerFeatureReader, utterances: List[Tuple[str, int]], split: str, nshard: int, rank: int,
               feat_dir: str, progress: bool = True) -> Tuple[str, str]:
    """Write one shard (see the module docstring); returns the .npy and .len paths."""
    feat_path, leng_path = shard_paths(feat_dir, split, nshard, rank)
    os.makedirs(feat_dir, exist_ok=True)
    feats = NpyRowWriter(feat_path + ".partial")
    try:
        with open(leng_path + ".partial", "w") as lengths:
            for path, num_samples in tqdm.tqdm(utterances, desc=f"{split} shard {rank}/{nshard}",
                                               disable=not progress, unit="utt"):
                feat = reader.get_feats(path, num_samples)
                feats.append(feat.numpy())
                lengths.write(f"{len(feat)}\n")
    finally:
        feats.close()
    # .len last: a shard with both final names is complete.
    os.replace(feat_path + ".partial", feat_path)
    os.replace(leng_path + ".partial", leng_path)
    return feat_path, leng_path


def dump_features(path: str, tsv_dir: str, split: str, output_layer: Optional[int], nshard: int, rank: int,
                  feat_dir: str, device: str = "cpu", max_chunk: int = 1_600_000, progress: bool = True) -> dict:
    """Dump (or skip, when finished) shard ``rank`` of ``nshard`` of ``{tsv_dir}/{split}.tsv``."""
    tsv = os.path.join(tsv_dir, f"{split}.tsv")
    if not os.path.isfile(tsv):
        raise FileNotFoundError(f"manifest not found: {tsv}")
    model, task_cfg = load_birq_encoder(path)
    check_output_layer(model, output_layer)
    utterances = shard_utterances(tsv, nshard, rank, int(task_cfg.sample_rate))
    feat_path, leng_path = shard_paths(feat_dir, split, nshard, rank)
    skipped = finished_shard(feat_dir, split, nshard, rank, len(utterances))
    if skipped:
        logger.info(f"shard {rank} of {nshard} already finished: {feat_path}")
    else:
        reader = LayerFeatureReader(model, task_cfg, output_layer, device, max_chunk)
        dump_shard(reader, utterances, split, nshard, rank, feat_dir, progress)
    rows = np.load(feat_path, mmap_mode="r").shape
    return {"npy": feat_path, "len": leng_path, "utterances": len(utterances), "frames": rows[0], "dim": rows[1],
            "skipped": skipped}


# --------------------------------------------------------------------------- command line
def add_parser(sub) -> None:
    p = sub.add_parser("dump-features", help="dump one layer's features for HuBERT's simple_kmeans (k-means, probes)")
    p.add_argument("--path", required=True, help="BiRQ checkpoint: pretraining, or finetuned (wav2vec_ctc) from one")
    p.add_argument("--data", required=True, help="directory with the fairseq manifest <split>.tsv")
    p.add_argument("--split", required=True, help="manifest name without .tsv (train, valid, ...)")
    p.add_argument("--layer", type=int, default=None,
                   help="output of transformer layer N (1-based, as HuBERT's dump scripts); default: the final output")
    p.add_argument("--feat-dir", required=True, help="writes <split>_<rank>_<nshard>.npy and .len here")
    p.add_argument("--nshard", type=int, default=1, help="number of shards (default 1)")
    p.add_argument("--rank", type=int, default=0, help="shard to dump, 0..nshard-1 (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--max-chunk", type=int, default=1_600_000,
                   help="run utterances longer than this many samples in chunks (default 1600000, HuBERT's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    result = dump_features(args.path, args.data, args.split, args.layer, args.nshard, args.rank, args.feat_dir,
                           device=args.device, max_chunk=args.max_chunk, progress=not args.no_progress)
    state = "already finished, skipped" if result["skipped"] else "written"
    print(f"shard {args.rank} of {args.nshard}: {result['utterances']} utterances, {result['frames']} frames x "
          f"{result['dim']} ({state}): {result['npy']} {result['len']}")
    return 0

