"""Part 3: end-to-end label cost, fairseq's HuBERT two-iteration pipeline vs one BiRQ run.

HuBERT (as examples/hubert/simple_kmeans + fairseq-hydra-train, fairseq's own recipe):
  iter 1: MFCC(13)+delta+delta-delta features stored to disk -> MiniBatchKMeans -> .km
          labels (100 Hz) -> train `hubert` (task `hubert_pretraining`) for N updates
  iter 2: dump layer `dump_layer` of that model over the corpus -> MiniBatchKMeans ->
          .km labels (50 Hz) -> train a fresh `hubert` for N updates
BiRQ: one `fairseq-hydra-train` run of examples/pretrain/tiny_birq.yaml for 2N updates
(same total number of updates as the two HuBERT iterations together).

The feature dump / k-means / label steps are minimal re-implementations of fairseq's
examples/hubert/simple_kmeans scripts (dump_mfcc_feature.py, dump_hubert_feature.py,
learn_kmeans.py, dump_km_label.py): same feature definitions, same MiniBatchKMeans
arguments (except n_init, lowered for CPU) and the same on-disk formats (.npy + .len
features, one line of space-separated ids per utterance in .km). The scripts themselves
import `npy_append_array`, which is not installed in this environment.
"""

import os
import shutil
import subprocess
import sys
import time
from typing import Dict

import numpy as np
import soundfile as sf
import torch

from bench_lib import REPO

FAIRSEQ_HYDRA_TRAIN = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")

HUBERT_YAML = """# @package _group_
common:
  cpu: true
  fp16: false
  log_format: simple
  log_interval: 10
  seed: 1
checkpoint:
  no_epoch_checkpoints: true
  save_interval_updates: 0
task:
  _name: hubert_pretraining
  data: ???
  label_dir: ???
  labels: ["km"]
  label_rate: ${model.label_rate}
  sample_rate: 16000
  max_sample_size: 96000
  min_sample_size: 8000
  pad_audio: false
  random_crop: true
  normalize: false
dataset:
  num_workers: 0
  max_tokens: 192000
  required_batch_size_multiple: 1
  skip_invalid_size_inputs_valid_test: true
  disable_validation: true
distributed_training:
  distributed_world_size: 1
  ddp_backend: legacy_ddp
criterion:
  _name: hubert
  pred_masked_weight: 1.0
  pred_nomask_weight: 0.0
  loss_weights: [10,]
optimization:
  max_update: ???
  lr: [0.001]
  clip_norm: 10.0
optimizer:
  _name: adam
  adam_betas: (0.9,0.98)
  adam_eps: 1e-06
  weight_decay: 0.01
lr_scheduler:
  _name: polynomial_decay
  warmup_updates: 5
model:
  _name: hubert
  label_rate: ???
  conv_feature_layers: '[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'
  encoder_layers: 4
  encoder_embed_dim: 96
  encoder_ffn_embed_dim: 192
  encoder_attention_heads: 4
  conv_pos: 16
  conv_pos_groups: 4
  final_dim: 32
  mask_prob: 0.8
  dropout: 0.0
  attention_dropout: 0.0
  dropout_input: 0.0
  dropout_features: 0.0
  encoder_layerdrop: 0.0
  feature_grad_mult: 0.1
  untie_final_proj: true
"""


def read_tsv(path):
    with open(path) as f:
        root = f.readline().rstrip()
        return [(os.path.join(root, line.split("\t")[0]), int(line.split("\t")[1]))
                for line in f if line.strip()]


def dir_bytes(*paths) -> int:
    total = 0
    for p in paths:
        if os.path.isfile(p):
            total += os.path.getsize(p)
        for root, _, files in os.walk(p):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _mfcc(wav: np.ndarray) -> np.ndarray:
    import torchaudio
    with torch.no_grad():
        x = torch.from_numpy(wav).float().view(1, -1)
        mfccs = torchaudio.compliance.kaldi.mfcc(waveform=x, sample_frequency=16000, use_energy=False)
        mfccs = mfccs.transpose(0, 1)
        deltas = torchaudio.functional.compute_deltas(mfccs)
        ddeltas = torchaudio.functional.compute_deltas(deltas)
        return torch.cat([mfccs, deltas, ddeltas], dim=0).transpose(0, 1).contiguous().numpy()


def dump_features(items, out_npy, feature_fn):
    feats, lengths = [], []
    for path, _ in items:
        wav, sr = sf.read(path, dtype="float32")
        assert sr == 16000, (path, sr)
        f = feature_fn(wav)
        feats.append(f)
        lengths.append(len(f))
    np.save(out_npy, np.concatenate(feats, 0).astype(np.float32))
    with open(out_npy[:-4] + ".len", "w") as f:
        f.write("\n".join(map(str, lengths)) + "\n")


def learn_kmeans(feat_npy, km_path, n_clusters, n_init, seed=0):
    import joblib
    from sklearn.cluster import MiniBatchKMeans
    feat = np.load(feat_npy)
    km = MiniBatchKMeans(n_clusters=n_clusters, init="k-means++", max_iter=100, batch_size=10000,
                         verbose=0, compute_labels=False, tol=0.0, max_no_improvement=100,
                         init_size=None, n_init=n_init, reassignment_ratio=0.0, random_state=seed)
    km.fit(feat)
    joblib.dump(km, km_path)


def dump_labels(feat_npy, km_path, out_km):
    import joblib
    km = joblib.load(km_path)
    c = km.cluster_centers_.T
    cnorm = (c ** 2).sum(0, keepdims=True)
    feat = np.load(feat_npy)
    with open(feat_npy[:-4] + ".len") as f:
        lengths = [int(x) for x in f if x.strip()]
    with open(out_km, "w") as f:
        offset = 0
        for n in lengths:
            x = feat[offset:offset + n]
            offset += n
            lab = np.argmin((x ** 2).sum(1, keepdims=True) - 2 * x @ c + cnorm, axis=1)
            f.write(" ".join(map(str, lab)) + "\n")


def write_dict(label_dir, n_clusters):
    with open(os.path.join(label_dir, "dict.km.txt"), "w") as f:
        f.write("".join(f"{i} 1\n" for i in range(n_clusters)))


def hubert_layer_feature_fn(ckpt, layer):
    from fairseq import checkpoint_utils
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt])
    model = models[0].eval()

    def fn(wav):
        with torch.no_grad():
            x = torch.from_numpy(wav).float().view(1, -1)
            feat, _ = model.extract_features(source=x, padding_mask=None, mask=False, output_layer=layer)
        return feat.squeeze(0).numpy()
    return fn


def fairseq_train(args, log_path, env=None) -> float:
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([FAIRSEQ_HYDRA_TRAIN] + args, stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"fairseq-hydra-train failed ({proc.returncode}), log {log_path}:\n{tail}")
    return elapsed


def prepare_corpus(work, data_dir, train_utts):
    """Manifest dir with train.tsv and valid.tsv: --data DIR, else synthetic audio."""
    if data_dir:
        for split in ("train", "valid"):
            if not os.path.exists(os.path.join(data_dir, f"{split}.tsv")):
                raise FileNotFoundError(f"--data {data_dir}: no {split}.tsv")
        return os.path.abspath(data_dir), "given"
    sys.path.insert(0, os.path.join(REPO, "manifests"))
    from synthetic_corpus import write_manifest
    corpus = os.path.join(work, "corpus")
    write_manifest(corpus, "train", train_utts, seed=1, min_seconds=2.0, max_seconds=4.0)
    write_manifest(corpus, "valid", 4, seed=2, min_seconds=2.0, max_seconds=4.0)
    return corpus, "synthetic (manifests/synthetic_corpus.write_manifest)"


def run_label_pipeline(work, data_dir=None, updates=20, train_utts=48, clusters=(100, 100), n_init=3,
                       dump_layer=2, log=print) -> Dict:
    os.makedirs(work, exist_ok=True)
    corpus, corpus_kind = prepare_corpus(work, data_dir, train_utts)
    splits = {s: read_tsv(os.path.join(corpus, f"{s}.tsv")) for s in ("train", "valid")}
    cfg_dir = os.path.join(work, "cfg")
    os.makedirs(cfg_dir, exist_ok=True)
    with open(os.path.join(cfg_dir, "hubert_tiny.yaml"), "w") as f:
        f.write(HUBERT_YAML)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    stages = {}

    def stage(name, fn):
        start = time.perf_counter()
        fn()
        stages[name] = time.perf_counter() - start
        log(f"  [labels] {name}: {stages[name]:.1f} s")

    def hubert_iteration(it, feature_fn_factory, label_rate, n_clusters):
        feat_dir = os.path.join(work, f"hubert_it{it}_feat")
        lab_dir = os.path.join(work, f"hubert_it{it}_lab")
        os.makedirs(feat_dir, exist_ok=True)
        os.makedirs(lab_dir, exist_ok=True)
        km_path = os.path.join(lab_dir, "km.bin")

        def dump():
            fn = feature_fn_factory()
            for s, items in splits.items():
                dump_features(items, os.path.join(feat_dir, f"{s}_0_1.npy"), fn)

        def kmeans():
            learn_kmeans(os.path.join(feat_dir, "train_0_1.npy"), km_path, n_clusters, n_init)

        def labels():
            for s in splits:
                dump_labels(os.path.join(feat_dir, f"{s}_0_1.npy"), km_path, os.path.join(lab_dir, f"{s}.km"))
            write_dict(lab_dir, n_clusters)

        save_dir = os.path.join(work, f"hubert_it{it}_ckpt")

        def train():
            fairseq_train([
                "--config-dir", cfg_dir, "--config-name", "hubert_tiny",
                f"task.data={corpus}", f"task.label_dir={lab_dir}", f"model.label_rate={label_rate}",
                f"optimization.max_update={updates}", f"checkpoint.save_dir={save_dir}",
                f"hydra.run.dir={os.path.join(work, f'hydra_hubert_it{it}')}",
            ], os.path.join(work, f"hubert_it{it}.log"), env)

        stage(f"hubert_it{it}_features", dump)
        stage(f"hubert_it{it}_kmeans", kmeans)
        stage(f"hubert_it{it}_labels", labels)
        stage(f"hubert_it{it}_train", train)
        return os.path.join(save_dir, "checkpoint_last.pt"), feat_dir, lab_dir

    ckpt1, f1, l1 = hubert_iteration(1, lambda: _mfcc, 100, clusters[0])
    _, f2, l2 = hubert_iteration(2, lambda: hubert_layer_feature_fn(ckpt1, dump_layer), 50, clusters[1])
    disk = {"hubert_it1_features": dir_bytes(f1), "hubert_it1_labels": dir_bytes(l1),
            "hubert_it2_features": dir_bytes(f2), "hubert_it2_labels": dir_bytes(l2), "birq": 0}

    def birq_train():
        fairseq_train([
            "--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", "tiny_birq",
            f"common.user_dir={os.path.join(REPO, 'birq_fairseq')}", f"task.data={corpus}",
            f"optimization.max_update={2 * updates}", "lr_scheduler.warmup_updates=5",
            "dataset.disable_validation=true", "checkpoint.save_interval_updates=0",
            f"checkpoint.save_dir={os.path.join(work, 'birq_ckpt')}",
            f"hydra.run.dir={os.path.join(work, 'hydra_birq')}",
        ], os.path.join(work, "birq.log"), env)

    stage("birq_train", birq_train)
    hubert_total = sum(v for k, v in stages.items() if k.startswith("hubert"))
    audio_seconds = sum(n for items in splits.values() for _, n in items) / 16000
    return {
        "corpus": corpus_kind, "corpus_dir": corpus, "utterances": {s: len(v) for s, v in splits.items()},
        "audio_seconds": audio_seconds,
        "updates_per_hubert_iteration": updates, "birq_updates": 2 * updates,
        "kmeans": {"clusters": list(clusters), "n_init": n_init, "iteration2_layer": dump_layer,
                   "implementation": "minimal re-implementation of fairseq simple_kmeans (sklearn MiniBatchKMeans)"},
        "models": "hubert: 4x96 transformer + 7-layer 64-ch conv extractor; birq: tiny_birq.yaml (4x96, k=2)",
        "stage_seconds": stages, "hubert_total_seconds": hubert_total,
        "birq_total_seconds": stages["birq_train"], "ratio_birq_to_hubert": stages["birq_train"] / hubert_total,
        "disk_bytes": disk, "hubert_disk_bytes": sum(disk.values()),
    }


def cleanup(work):
    shutil.rmtree(work, ignore_errors=True)
