"""The systems users would pick instead of BiRQ, built from fairseq's own code (issue #10).

``build_wav2vec2``: fairseq's ``Wav2Vec2Model`` with ``wav2vec2_base_librispeech.yaml``'s model
and its ``wav2vec`` criterion (InfoNCE contrastive loss + codebook diversity, loss_weights
[0.1, 10]). ``build_hubert``: fairseq's ``HubertModel`` with ``hubert_base_librispeech.yaml``'s
model (500 k-means classes at 50 Hz, labels given) and its ``hubert`` criterion. Both are 12 x 768
(~95M parameters, like BEST-RQ base), in training mode, layerdrop 0 (every step runs the same
layers, as the BiRQ benchmark models), with the same Adam as ``bench_lib.build``.

A pretraining step of either is ``bench_lib.train_step(model, criterion, optimizer, sample)``
with ``sample`` from ``bench_lib.make_sample`` (``add_hubert_labels`` adds HuBERT's targets).
"""

from types import SimpleNamespace

import torch

from fairseq.criterions.hubert_criterion import HubertCriterion
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq.data import Dictionary
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

SAMPLE_RATE = 16000
HUBERT_CLASSES = 500  # HuBERT base, iteration 2: k-means with 500 clusters on 6th-layer features
HUBERT_LABEL_RATE = 50

# wav2vec2_base_librispeech.yaml's model (the rest are Wav2Vec2Config's defaults: 12 x 768,
# FFN 3072, conv_pos 128, mask_prob 0.65, 2 x 320 codebook entries), layerdrop 0.
WAV2VEC2_BASE = dict(quantize_targets=True, final_dim=256, encoder_layerdrop=0.0, dropout_input=0.1,
                     dropout_features=0.1, feature_grad_mult=0.1, encoder_embed_dim=768)
# hubert_base_librispeech.yaml's model, layerdrop 0.
HUBERT_BASE = dict(label_rate=HUBERT_LABEL_RATE, skip_masked=False, skip_nomask=False, mask_prob=0.80,
                   extractor_mode="default", conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
                   final_dim=256, encoder_layerdrop=0.0, dropout_input=0.1, dropout_features=0.1, dropout=0.1,
                   attention_dropout=0.1, feature_grad_mult=0.1, untie_final_proj=True, activation_dropout=0.0)


def _adam(model, lr):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6)


def build_wav2vec2(overrides: dict = None, seed: int = 0, lr: float = 1e-4):
    """(model, criterion, optimizer): fairseq's wav2vec 2.0 pretraining, base-shaped."""
    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**dict(WAV2VEC2_BASE, **(overrides or {}))))
    model.train()
    criterion = Wav2vecCriterion(SimpleNamespace(), infonce=True, loss_weights=[0.1, 10],
                                 log_keys=["prob_perplexity", "code_perplexity", "temp"])
    return model, criterion, _adam(model, lr)


def build_hubert(overrides: dict = None, seed: int = 0, lr: float = 1e-4):
    """(model, criterion, optimizer): fairseq's HuBERT pretraining, base-shaped, labels given."""
    torch.manual_seed(seed)
    dictionary = Dictionary()
    for i in range(HUBERT_CLASSES):
        dictionary.add_symbol(str(i))
    task_cfg = SimpleNamespace(label_rate=HUBERT_LABEL_RATE, sample_rate=SAMPLE_RATE)
    model = HubertModel(HubertConfig(**dict(HUBERT_BASE, **(overrides or {}))), task_cfg, [dictionary])
    model.train()
    criterion = HubertCriterion(SimpleNamespace(), pred_masked_weight=1.0, pred_nomask_weight=0.0,
                                loss_weights=[10.0], log_keys=[])
    return model, criterion, _adam(model, lr)


def add_hubert_labels(sample: dict, seed: int = 0) -> dict:
    """sample + HuBERT's ``target_list``: one (B, seconds x 50) tensor of given k-means labels
    (and an explicit all-False padding mask, which HubertModel requires).

    The labels are drawn at random (the step's cost does not depend on their values); the
    Dictionary's 4 special symbols come first, so classes are 4..503 as fairseq's label
    encoder would make them."""
    source = sample["net_input"]["source"]
    frames = int(source.size(1) / SAMPLE_RATE * HUBERT_LABEL_RATE)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, 4 + HUBERT_CLASSES, (source.size(0), frames), generator=g)
    # HubertModel.forward needs a padding mask tensor (all False: no padding).
    net_input = dict(sample["net_input"], padding_mask=torch.zeros_like(source, dtype=torch.bool))
    return dict(sample, net_input=net_input, target_list=[labels])
