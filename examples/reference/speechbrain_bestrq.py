"""A reference BEST-RQ that no one here wrote: SpeechBrain's, on our corpus, scored by our frozen evaluation.

    python examples/reference/speechbrain_bestrq.py --data DATA --out OUT [--updates 10000] [--frozen-eval]

Issue 15, item 4: is our BEST-RQ (``birq`` with ``model.enhanced_stream=false``) weak on the
demo's TTS corpus, or is the corpus hard for BEST-RQ at this compute? This script trains
SpeechBrain 1.1.2's BEST-RQ (``pip install -e .[reference]``) at our model size and on the
same audio per update, then scores it with ``birq-fairseq superb`` (same probes, same
splits). Everything SpeechBrain provides is imported from it, not copied:

- fbank (``speechbrain.lobes.features.Fbank``) -> sentence mean/variance normalisation
  (``speechbrain.processing.features.InputNormalization``) -> ``ConvolutionFrontEnd`` (the
  recipe's 2 x stride-2 CNN, 4x subsampling) -> ``TransformerASR`` with its Conformer encoder
  (RelPosMHAXL attention, pre-LN, GELU, no decoder) -> linear head over the codebook;
- targets: ``speechbrain.nnet.quantisers.RandomProjectionQuantizer`` on 4 stacked normalised
  fbank frames (320 -> 16, 8192 codes); masking and collation:
  ``speechbrain.lobes.models.BESTRQ.brq_mask_collate_fn``; the step is the recipe's
  ``BestRQBrain.compute_forward`` / ``compute_objectives`` (noise N(0, 0.1) on masked fbank
  frames, cross-entropy over the masked 40 ms frames); ``speechbrain.nnet.schedulers.NoamScheduler``.

Hyper-parameters are the recipe's (:data:`RECIPE`; speechbrain/speechbrain
recipes/LibriSpeech/self-supervised-learning/BEST-RQ/hparams/BEST-RQ.yaml and train.py).
Departures, and why:

- model size: ``--layers 6 --d-model 192 --heads 4 --ffn 768`` (our "medium" rung,
  examples/demo/ladder.py), not the recipe's 12 x 576 / 8 heads / 2048: equal model size;
- batches: our runs' data pipeline, not the recipe's 400 s dynamic buckets x 2 accumulation
  (about 2 h of audio per update on GPUs): the same ``CheckedFileAudioDataset``
  (min_sample_size 8000, max_sample_size 96000), fairseq's size-sorted batches of at most
  ``--max-tokens`` 128000 padded samples (8 s), each clip cropped to the batch's shortest
  (fairseq's collater without padding), batches shuffled per epoch: equal audio per update,
  hence equal audio hours for equal updates. The recipe also drops clips under 2 s; ours
  drops those under 0.5 s;
- warmup: the recipe's Noam warm-up is 25000 of its 300000 updates (1/12); here
  ``--warmup`` defaults to the same fraction of ``--updates`` (833 of 10000): the recipe's
  25000 would never leave the warm-up in 10000 updates (lr would peak at 0.4 x 8e-4);
- no Dynamic Chunk Training (``streaming: True`` in the YAML): our BEST-RQ is not
  streaming and the YAML notes non-streaming accuracy is very similar; the stored train.py
  (commit 3fad711) calls the encoder without a chunk config as well;
- fp32 on one CPU thread, not bf16 on GPUs; ``--seed`` 1 (our ladder's) rather than 1000;
- no validation pass: the frozen evaluation scores the result.

Outputs under ``--out``: ``train.log`` (a JSON line every ``--log-interval`` updates: update,
loss, accuracy, lr, audio seconds per update, wall seconds), ``checkpoint_last.pt`` (every
``--save-interval`` updates and at the end; written to a temporary name and renamed; a rerun
resumes from it, and a finished run is skipped), ``frozen.json`` (``--frozen-eval``: the
output of ``birq-fairseq superb --train finetune --valid valid --test test_seen test_unseen
--task pr asr --downstream linear --json``, with the upstream built here).
"""

import argparse
import json
import os
import random
import sys
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from birq_fairseq import superb
from birq_fairseq.data.audio import CheckedFileAudioDataset
from birq_fairseq.modules.frontend import min_samples_for_one_step
from birq_fairseq.upstream import SAMPLE_RATE, FrozenUpstream

try:
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.BESTRQ import brq_mask_collate_fn
    from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
    from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    from speechbrain.nnet.linear import Linear
    from speechbrain.nnet.quantisers import RandomProjectionQuantizer
    from speechbrain.nnet.schedulers import NoamScheduler
    from speechbrain.processing.features import InputNormalization
except ImportError as e:  # an optional extra: say how to get it
    raise SystemExit(f"speechbrain is not installed ({e}): pip install -e '.[reference]'") from e

# The recipe's values (BEST-RQ.yaml unless noted). Model size, batch and warm-up: see the docstring.
RECIPE = dict(
    n_fft=400, n_mels=80, hop_length_ms=10, pad_to_divisible_by=4,
    cnn=dict(input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1, out_channels=(128, 32),
             kernel_sizes=(3, 3), strides=(2, 2), residuals=(False, False)),
    transformer_input_size=640,  # 32 CNN channels x 80 / 4 mel bins
    transformer_dropout=0.1, encoder_layerdrop=0.0, attention_type="RelPosMHAXL", normalize_before=True,
    mask_length=4, mask_prob=0.15, noise_mean=0.0, noise_std=0.1,
    p_input=320, cb_dim=16, cb_vocab=8192,
    lr=8e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01,  # torch.optim.AdamW
    n_warmup_steps=25000, optimizer_step_limit=300000,  # NoamScheduler; the recipe's total updates
    max_grad_norm=10.0,
)
# Our runs' data pipeline (examples/demo/pipeline.py, examples/pretrain/tiny_birq.yaml).
MAX_TOKENS = 128000
MAX_SAMPLE_SIZE = 96000
MIN_SAMPLE_SIZE = 8000
FRAMES_PER_STEP = RECIPE["pad_to_divisible_by"]  # fbank frames per encoder frame (the CNN's 4x)
HOP = SAMPLE_RATE * RECIPE["hop_length_ms"] // 1000  # 160 samples


def fbank_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """The recipe's ``get_output_lengths``: fbank frames of a clip (SpeechBrain's STFT is centred)."""
    return (num_samples // HOP + 1).long()


def encoder_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """Encoder frames of a clip: fbank frames padded to a multiple of 4, then the CNN's 4x."""
    return torch.div(fbank_frames(num_samples) + FRAMES_PER_STEP - 1, FRAMES_PER_STEP, rounding_mode="floor")


def pad_feats(feats: torch.Tensor) -> torch.Tensor:
    """The recipe's ``pad_feats``: (B, T, C) -> (B, ceil(T / 4) * 4, C), zeros at the end."""
    return F.pad(feats, (0, 0, 0, (-feats.size(1)) % FRAMES_PER_STEP))


class SpeechBrainBestRQ(nn.Module):
    """The recipe's modules: features, CNN, Conformer encoder, random-projection quantizer, head.

    ``encode(wavs (B, S), wav_lens (B,) relative)`` -> (normalised fbank (B, T, 80) with T a
    multiple of 4, hidden states: L + 1 tensors (B, T / 4, d_model)).
    """

    def __init__(self, layers: int = 6, d_model: int = 192, heads: int = 4, ffn: int = 768,
                 cb_vocab: int = RECIPE["cb_vocab"], dropout: float = RECIPE["transformer_dropout"]):
        super().__init__()
        self.config = dict(layers=layers, d_model=d_model, heads=heads, ffn=ffn, cb_vocab=cb_vocab, dropout=dropout)
        self.compute_features = Fbank(sample_rate=SAMPLE_RATE, n_fft=RECIPE["n_fft"], n_mels=RECIPE["n_mels"])
        self.normalize = InputNormalization(norm_type="sentence")
        self.CNN = ConvolutionFrontEnd(**RECIPE["cnn"])
        self.transformer = TransformerASR(
            input_size=RECIPE["transformer_input_size"], tgt_vocab=cb_vocab, d_model=d_model, nhead=heads,
            num_encoder_layers=layers, num_decoder_layers=0, d_ffn=ffn, dropout=dropout, activation=nn.GELU,
            conformer_activation=nn.GELU, encoder_module="conformer", attention_type=RECIPE["attention_type"],
            normalize_before=RECIPE["normalize_before"], causal=False, layerdrop_prob=RECIPE["encoder_layerdrop"],
            output_hidden_states=True)  # also the layer outputs, for the frozen evaluation
        self.Quantizer = RandomProjectionQuantizer(RECIPE["p_input"], RECIPE["cb_dim"], cb_vocab)
        self.linear = Linear(input_size=d_model, n_neurons=cb_vocab)

    def features(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        feats = self.compute_features(wavs)
        return pad_feats(self.normalize(feats, wav_lens))

    def encode(self, feats: torch.Tensor, wav_lens: torch.Tensor) -> List[torch.Tensor]:
        """feats (B, T, 80) -> L + 1 states (B, T / 4, D): the CNN output projected to d_model
        (the input of layer 1), layers 1..L-1, and the encoder output (layer L after the final
        layer norm of the pre-LN encoder, as :class:`birq_fairseq.upstream.BirqUpstream`)."""
        out, hidden = self.transformer.encode(self.CNN(feats), wav_lens)
        return list(hidden[:-1]) + [out]

    def step(self, wavs: torch.Tensor, wav_lens: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """The recipe's compute_forward + compute_objectives -> (loss, accuracy on masked frames).

        wavs (B, S), wav_lens (B,) relative, mask (M,) masked fbank-frame indices (whole 4-frame
        steps, the same for the whole batch, from ``brq_mask_collate_fn``).
        """
        feats = self.features(wavs, wav_lens)
        mask_idx = mask[::FRAMES_PER_STEP] // FRAMES_PER_STEP  # masked encoder frames
        b, t, c = feats.shape
        with torch.no_grad():
            targets = self.Quantizer(feats.view(b, t // FRAMES_PER_STEP, -1)[:, mask_idx, :])  # (B, M / 4)
        noise = torch.normal(mean=RECIPE["noise_mean"], std=RECIPE["noise_std"], size=(b, mask.shape[0], c),
                             device=feats.device)
        feats[:, mask, :] = noise
        logits = self.linear(self.encode(feats, wav_lens)[-1])[:, mask_idx, :]  # (B, M / 4, V)
        logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        accuracy = (logits.detach().argmax(-1) == targets).float().mean().item()
        return F.cross_entropy(logits, targets), accuracy


class SpeechBrainUpstream(FrozenUpstream):
    """A trained :class:`SpeechBrainBestRQ` as a frozen upstream for ``birq_fairseq.superb``.

    N = L + 1 hidden states (:meth:`SpeechBrainBestRQ.encode`) of d_model at 40 ms (640 samples);
    a clip of S samples has ceil((S // 160 + 1) / 4) frames.
    """

    def __init__(self, model: SpeechBrainBestRQ, path: str):
        super().__init__()
        self.model = model
        self.freeze()
        self.path = path
        self.sample_rate = SAMPLE_RATE
        self.normalize = False  # the model normalises its fbank per sentence
        self.min_samples = RECIPE["n_fft"]  # one full window (any clip has a centred frame)
        self.downsample_rate = HOP * FRAMES_PER_STEP
        self.num_hidden_states = model.config["layers"] + 1
        self.hidden_size = model.config["d_model"]

    @classmethod
    def from_checkpoint(cls, path: str) -> "SpeechBrainUpstream":
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = SpeechBrainBestRQ(**state["model_config"])
        model.load_state_dict(state["model"])
        return cls(model, path)

    @torch.no_grad()
    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """source (B, S), padding_mask (B, S) True at padding -> (L + 1 states (B, T', D), frames (B,)).

        One clip at a time: SpeechBrain's front end is not padding-invariant (the CNN sees the
        normalised fbank of the padding), and a clip's features must not depend on its batch.
        """
        samples = torch.full((source.size(0),), source.size(1), device=source.device) if padding_mask is None \
            else (~padding_mask).sum(-1)
        frames = encoder_frames(samples)
        out = [source.new_zeros(source.size(0), int(frames.max()), self.hidden_size)
               for _ in range(self.num_hidden_states)]
        for b in range(source.size(0)):
            wav, whole = source[b:b + 1, : int(samples[b])], source.new_ones(1)
            for state, h in zip(out, self.model.encode(self.model.features(wav, whole), whole)):
                state[b, : h.size(1)] = h[0]
        return out, frames


# --------------------------------------------------------------------------- data
def load_dataset(data: str) -> CheckedFileAudioDataset:
    """``DATA/train.tsv`` through our pretraining task's dataset (no padding: crops to the batch's shortest)."""
    return CheckedFileAudioDataset(
        manifest_path=os.path.join(data, "train.tsv"), sample_rate=SAMPLE_RATE,
        min_audio_samples=min_samples_for_one_step(SAMPLE_RATE), max_sample_size=MAX_SAMPLE_SIZE,
        min_sample_size=MIN_SAMPLE_SIZE, pad=False, normalize=False)


def make_batches(dataset: CheckedFileAudioDataset, max_tokens: int, seed: int) -> List[np.ndarray]:
    """fairseq's batches for ``dataset.max_tokens``: size-sorted, at most ``max_tokens`` padded samples each."""
    from fairseq.data import data_utils

    with data_utils.numpy_seed(seed):
        indices = dataset.ordered_indices()
    return list(dataset.batch_by_size(indices, max_tokens=max_tokens, max_sentences=None,
                                      required_batch_size_multiple=1))


def epoch_order(batches: List[np.ndarray], seed: int, epoch: int) -> List[np.ndarray]:
    """The batches of one epoch in fairseq's shuffled order (seeded by seed + epoch)."""
    from fairseq.data import data_utils

    order = list(batches)
    with data_utils.numpy_seed(seed + epoch):
        np.random.shuffle(order)
    return order


def collate(dataset: CheckedFileAudioDataset, ids: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our collater (crop to the batch's shortest), then SpeechBrain's BEST-RQ collation and mask.

    -> (wavs (B, S), wav_lens (B,) relative, mask (M,) fbank-frame indices).
    """
    source = dataset.collater([dataset[int(i)] for i in ids])["net_input"]["source"]  # (B, S)
    samples = [{"id": str(i), "sig": wav} for i, wav in zip(ids, source)]
    return brq_mask_collate_fn(samples, get_out_len_fn=fbank_frames, mask_prob=RECIPE["mask_prob"],
                               mask_length=RECIPE["mask_length"], n_mels=RECIPE["n_mels"])


# --------------------------------------------------------------------------- training
def save_atomic(obj: dict, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(args) -> dict:
    """Train (or resume) to ``args.updates``; returns the last checkpoint's state."""
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint_last.pt")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if os.path.isfile(ckpt_path) else None
    if state is not None and state["update"] >= args.updates:
        print(f"{ckpt_path}: finished ({state['update']} updates); skipping training")
        return state
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # compute_mask draws with Python's random
    model_config = state["model_config"] if state else dict(layers=args.layers, d_model=args.d_model,
                                                            heads=args.heads, ffn=args.ffn)
    model = SpeechBrainBestRQ(**model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], betas=RECIPE["betas"], eps=RECIPE["eps"],
                                  weight_decay=RECIPE["weight_decay"])
    if state is not None:  # extending a run (a larger --updates) keeps its schedule
        warmup = state["warmup"]
    elif args.warmup is not None:
        warmup = args.warmup
    else:
        warmup = max(1, round(args.updates * RECIPE["n_warmup_steps"] / RECIPE["optimizer_step_limit"]))
    noam = NoamScheduler(lr_initial=RECIPE["lr"], n_warmup_steps=warmup)
    dataset = load_dataset(args.data)
    batches = make_batches(dataset, args.max_tokens, args.seed)
    update, epoch, position, audio_seconds = 0, 1, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        noam.n_steps = state["noam_steps"]
        update, epoch, position, audio_seconds = state["update"], state["epoch"], state["position"], \
            state["audio_seconds"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        print(f"resuming from {ckpt_path} at update {update}")
    params = sum(p.numel() for p in model.parameters())
    print(f"SpeechBrain BEST-RQ {model_config}: {params / 1e6:.2f} M parameters, warm-up {warmup} updates, "
          f"{len(batches)} batches per epoch")

    def snapshot() -> dict:
        return dict(model=model.state_dict(), model_config=model_config, optimizer=optimizer.state_dict(),
                    noam_steps=noam.n_steps, update=update, epoch=epoch, position=position,
                    audio_seconds=audio_seconds, warmup=warmup, recipe=RECIPE, max_tokens=args.max_tokens,
                    seed=args.seed, rng=dict(torch=torch.get_rng_state(), python=random.getstate()))

    model.train()
    log = open(os.path.join(args.out, "train.log"), "a")
    start, interval = time.time(), dict(loss=0.0, accuracy=0.0, audio=0.0, n=0)
    while update < args.updates:
        order = epoch_order(batches, args.seed, epoch)
        dataset.set_epoch(epoch)
        while position < len(order) and update < args.updates:
            wavs, wav_lens, mask = collate(dataset, order[position])
            loss, accuracy = model.step(wavs, wav_lens, mask)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
            optimizer.step()
            noam(optimizer)  # after the step, as the recipe's on_fit_batch_end
            update, position = update + 1, position + 1
            seconds = wavs.numel() / SAMPLE_RATE  # cropped: every clip is the batch's length
            audio_seconds += seconds
            interval = dict(loss=interval["loss"] + loss.item(), accuracy=interval["accuracy"] + accuracy,
                            audio=interval["audio"] + seconds, n=interval["n"] + 1)
            if update % args.log_interval == 0 or update == args.updates:
                n = interval["n"]
                row = dict(update=update, epoch=epoch, loss=round(interval["loss"] / n, 4),
                           accuracy=round(interval["accuracy"] / n, 4), lr=optimizer.param_groups[0]["lr"],
                           audio_seconds_per_update=round(interval["audio"] / n, 3),
                           audio_hours_seen=round(audio_seconds / 3600, 3), wall=round(time.time() - start, 1))
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(json.dumps(row), flush=True)
                interval = dict(loss=0.0, accuracy=0.0, audio=0.0, n=0)
            if update % args.save_interval == 0 or update == args.updates:
                save_atomic(snapshot(), ckpt_path)
        if position >= len(order):
            epoch, position = epoch + 1, 0
    log.close()
    if not os.path.isfile(ckpt_path):  # --updates 0: the seeded initialisation (the "none" row)
        save_atomic(snapshot(), ckpt_path)
    return snapshot()


def frozen_eval(args) -> dict:
    """``birq-fairseq superb`` (its parser, defaults and JSON) on the trained encoder."""
    ckpt_path = os.path.join(args.out, "checkpoint_last.pt")
    parser = argparse.ArgumentParser(prog="birq-fairseq")
    superb.add_parser(parser.add_subparsers(dest="command"))
    sargs = parser.parse_args(["superb", "--upstream", ckpt_path, "--data", args.data, "--train", "finetune",
                               "--valid", "valid", "--test", "test_seen", "test_unseen", "--task", "pr", "asr",
                               "--downstream", "linear", "--cache", args.cache, "--json",
                               os.path.join(args.out, "frozen.json")] + list(args.superb_args))
    sargs.upstream = SpeechBrainUpstream.from_checkpoint(ckpt_path)
    superb.run(sargs)
    with open(sargs.json) as f:
        return json.load(f)


def summarise(args, frozen: dict) -> dict:
    """The run's summary for ``--summary``: what it trained (updates, audio hours seen, schedule,
    size), its last logged training row and the frozen evaluation's JSON, in the shape the
    ladder's reference table reads (examples/demo/ladder.py ``reference_report``)."""
    state = torch.load(os.path.join(args.out, "checkpoint_last.pt"), map_location="cpu", weights_only=False)
    log_path = os.path.join(args.out, "train.log")
    rows = []
    if os.path.isfile(log_path):
        with open(log_path) as f:
            rows = [r for r in (json.loads(line) for line in f if line.strip()) if r["update"] <= state["update"]]
    config = state["model_config"]
    update = state["update"]
    length = "init" if update == 0 else f"{update // 1000}k" if update % 1000 == 0 else str(update)
    return dict(rung=f"speechbrain_bestrq_{config['layers']}x{config['d_model']}_{length}_seed{args.seed}",
                system="speechbrain_bestrq", model_config=config, updates=update,
                seed=args.seed, warmup=state.get("warmup"), max_tokens=state.get("max_tokens"),
                audio_hours_seen=round(state.get("audio_seconds", 0.0) / 3600, 2),
                final_train={k: rows[-1][k] for k in ("loss", "accuracy", "lr")} if rows else None,
                wall_seconds=rows[-1]["wall"] if rows else None, superb=frozen)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="fairseq manifest directory (train.tsv; finetune/valid/test_* "
                   "with .phn/.ltr for --frozen-eval)")
    p.add_argument("--out", required=True, help="output directory (train.log, checkpoint_last.pt, frozen.json)")
    p.add_argument("--updates", type=int, default=10000, help="optimizer updates (default 10000, as our ladder; "
                   "0: save the seeded initialisation, to score the untrained encoder)")
    p.add_argument("--layers", type=int, default=6, help="Conformer layers (default 6: our medium rung)")
    p.add_argument("--d-model", type=int, default=192, help="model width (default 192)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--ffn", type=int, default=768, help="feed-forward width (default 768)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                   help=f"padded samples per batch (default {MAX_TOKENS}: 8 s, our runs' dataset.max_tokens)")
    p.add_argument("--warmup", type=int, default=None, help="Noam warm-up updates (default: the recipe's "
                   "25000/300000 of --updates)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-interval", type=int, default=100)
    p.add_argument("--save-interval", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as our CPU runs)")
    p.add_argument("--frozen-eval", action="store_true", help="then run the frozen evaluation -> OUT/frozen.json")
    p.add_argument("--cache", default=superb.DEFAULT_CACHE, help="feature cache of the frozen evaluation")
    p.add_argument("--summary", default=None, help="with --frozen-eval: write the run's summary JSON here "
                   "(examples/reference/results/<run>.json, read by the ladder's reference table)")
    p.add_argument("--superb-args", nargs=argparse.REMAINDER, default=[],
                   help="further birq-fairseq superb options, last (e.g. --superb-args --epochs 10)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary and not args.frozen_eval:  # said before hours of training, not after
        raise SystemExit("--summary needs --frozen-eval (the summary holds the frozen evaluation)")
    torch.set_num_threads(args.threads)
    train(args)
    if args.frozen_eval:
        frozen = frozen_eval(args)
        if args.summary:
            os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
            with open(args.summary, "w") as f:
                json.dump(summarise(args, frozen), f, indent=1)
                f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
