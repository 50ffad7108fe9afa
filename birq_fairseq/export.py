"""The BiRQ encoder outside fairseq: waveform in, one layer's features out, as a torch.export program.

    birq-fairseq export --path CKPT --layer 6 --out birq.pt2 [--torchscript birq.pt] [--onnx birq.onnx]

Every file takes ``source`` (B, S) float32 16 kHz waveforms and ``padding_mask`` (B, S) bool
(True = padding; all False for one clip or equal lengths) and returns ``features``
(B, T', D) float32 and ``feature_padding_mask`` (B, T') bool, T' = 40 ms frames of the padded
length; frames past a clip's end are padding and carry no meaning. Batch and time are
dynamic. The command checks the exported files against the fairseq model before it returns.

How: :class:`BirqFeatureEncoder` wraps the model's own ``extract_features`` (no second copy
of the forward pass), and is

- exported with ``torch.export`` (:func:`export_program`, the default format, ``--out``): an
  ``ExportedProgram`` saved with ``torch.export.save``, for any batch size and any padded
  length of two 40 ms frames or more (1520 samples at 16 kHz). :func:`exportable_encoder`
  holds what the export needs to keep both axes dynamic;
- or traced: ``torch.jit.trace`` (``--torchscript``; TorchScript is deprecated in torch, which
  warns at every trace and freeze: kept for consumers that need it, without those warnings)
  and ``torch.onnx.export`` with the TorchScript-based exporter (``--onnx``, opset 17; the
  log-mel front-end exports its STFT as a convolution). Tracing records one path through
  Python branches, so the example input holds padding (the padded path is also exact for
  unpadded input), and :func:`traceable_fairseq` stands in for two fairseq helpers that do not
  trace or export right.

The torch.export and TorchScript files run on the device they were made on (``--device``); the
ONNX file runs wherever onnxruntime does.
"""

import contextlib
import logging
import os
import warnings
from typing import Optional, Sequence, Tuple

import torch
import torch.fx.experimental._config as fx_config
import torch.nn as nn
from fairseq.models.wav2vec import wav2vec2
from fairseq.modules.multihead_attention import MultiheadAttention

from birq_fairseq.features import check_output_layer
from birq_fairseq.loading import load_birq_encoder
from birq_fairseq.modules.frontend import FRAMES_PER_STEP

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAMES = ["source", "padding_mask"]
OUTPUT_NAMES = ["features", "feature_padding_mask"]


class BirqFeatureEncoder(nn.Module):
    """A BiRQ model's features at one layer: the module that is exported.

    forward(source (B, S) float, padding_mask (B, S) bool, True = padding)
        -> features (B, T', D), feature_padding_mask (B, T') bool.
    ``output_layer``: the output of transformer layer N (1-based, as HuBERT's dump scripts and
    ``birq-fairseq dump-features --layer``); None = the encoder's final output.
    """

    def __init__(self, model: nn.Module, output_layer: Optional[int] = None):
        super().__init__()
        check_output_layer(model, output_layer)
        self.model = model
        self.layer = None if output_layer is None else output_layer - 1  # extract_features counts from 0
        self.eval()  # inference only: no dropout, and tracing records the eval path

    @torch.no_grad()  # inference only; torch.export keeps it, so its program computes no gradients either
    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.model.extract_features(source, padding_mask, mask=False, layer=self.layer)
        return out["x"], out["padding_mask"]


def _pad_to_multiple_untraced(x, multiple, dim=-1, value=0):
    """fairseq's ``pad_to_multiple`` calls ``float.is_integer()`` on a size, which is a tensor while
    tracing. The padding only rounds the encoder's length up for kernels' sake (padded frames are
    masked), so an exported encoder leaves the length as it is: same valid frames."""
    return (None, 0) if x is None else (x, 0)


def _index_put_as_masked_fill(tensor, indices, value):
    """fairseq's ``index_put`` (``tensor[mask] = value``) as ``masked_fill``: the same result, but the
    ONNX exporter turns the boolean-index assignment of a (B, T) mask into a (B, T, D) tensor into a
    ``Where`` that broadcasts the mask against the wrong axes (onnxruntime fails at run time)."""
    return tensor.masked_fill(indices.reshape(indices.shape + (1,) * (tensor.dim() - indices.dim())), value)


@contextlib.contextmanager
def traceable_fairseq():
    """While exporting, replace the fairseq helpers of the encoder that do not trace or export right."""
    replacements = {"pad_to_multiple": _pad_to_multiple_untraced, "index_put": _index_put_as_masked_fill}
    originals = {name: getattr(wav2vec2, name) for name in replacements}
    for name, function in replacements.items():
        setattr(wav2vec2, name, function)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(wav2vec2, name, function)


def example_input(lengths: Sequence[int] = (24000, 16000), device="cpu", seed: int = 0):
    """A padded batch of noise, (B, max(lengths)) and its padding mask (True past each length)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.zeros(len(lengths), max(lengths))
    padding_mask = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g) * 0.1
        padding_mask[i, :n] = False
    return source.to(device), padding_mask.to(device)


def _check_example(padding_mask: torch.Tensor) -> None:
    if not bool(padding_mask.any()):
        raise ValueError("trace with a padded example (some padding_mask True): tracing keeps one path, and only "
                         "the padded one is also right for unpadded input")


@contextlib.contextmanager
def _quiet_tracer():
    """Tracing warns at every Python branch on a tensor; the ones on this path are shape checks, and
    the padding branch is covered by tracing with padding (``_check_example``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # TorchScript's deprecation (torch 2.14), at every trace and freeze: the user chose the
        # format (--torchscript, whose help says so), and torch's advice is what --out does
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.(trace(_method)?|freeze)` is deprecated")
        yield


def export_torchscript(encoder: BirqFeatureEncoder, path: str, example=None) -> torch.jit.ScriptModule:
    """Trace ``encoder`` on ``example`` (source, padding_mask) and save it to ``path``."""
    example = example if example is not None else example_input()
    _check_example(example[1])
    with traceable_fairseq(), torch.no_grad(), _quiet_tracer():
        # frozen: weights become constants, so outputs need no torch.no_grad() and no autograd state
        traced = torch.jit.freeze(torch.jit.trace(encoder, example, check_trace=False))
    traced.save(path)
    return traced


def export_onnx(encoder: BirqFeatureEncoder, path: str, example=None, opset: int = ONNX_OPSET) -> None:
    """Export ``encoder`` to ONNX at ``path`` with dynamic batch and time axes."""
    example = example if example is not None else example_input()
    _check_example(example[1])
    axes = {"source": {0: "batch", 1: "samples"}, "padding_mask": {0: "batch", 1: "samples"},
            "features": {0: "batch", 1: "frames"}, "feature_padding_mask": {0: "batch", 1: "frames"}}
    with traceable_fairseq(), torch.no_grad(), _quiet_tracer():
        torch.onnx.export(encoder, example, path, dynamo=False, opset_version=opset, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=axes)


def min_program_samples(model: nn.Module) -> int:
    """Shortest padded length (samples) the torch.export program takes: two 40 ms frames.

    torch.export assumes dynamic sizes are not 0 or 1, so a batch padded to a single frame
    (880-1519 samples at 16 kHz) is outside the program's range; 1520 samples is 95 ms.
    """
    frontend = model.frontend
    return frontend.win_length + (2 * FRAMES_PER_STEP - 1) * frontend.hop_length


def _contiguous_inputs(module, args, kwargs):
    """Forward pre-hook: contiguous copies of a module's tensor inputs (see :func:`exportable_encoder`)."""
    def copy(t):
        return t.clone(memory_format=torch.contiguous_format) if isinstance(t, torch.Tensor) else t

    return tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}


@contextlib.contextmanager
def exportable_encoder(encoder: BirqFeatureEncoder):
    """While torch.export traces ``encoder``, the changes it needs to keep batch and time dynamic; undone after.

    - fairseq's helpers, as for tracing (:func:`traceable_fairseq`);
    - the encoder always takes the padded path (``BirqModel.run_encoder`` checks
      ``torch.compiler.is_exporting()``);
    - every linear map (``nn.Linear``, fairseq's ``MultiheadAttention``) gets a contiguous copy of
      its input. fairseq's layers run time-first, on a transposed (T', B, D) view; torch decides how
      to multiply it by checking its contiguity, which depends on whether B is 1, and the program
      would then refuse a single clip. The copy costs one pass over the activations per layer;
    - torch's ``backed_size_oblivious``: sizes are taken as >= 2 wherever torch would otherwise
      specialise the program on a size of 0 or 1 (torch.export's "0/1 specialization").
    """
    hooks = [m.register_forward_pre_hook(_contiguous_inputs, with_kwargs=True)
             for m in encoder.modules() if isinstance(m, (nn.Linear, MultiheadAttention))]
    try:
        with traceable_fairseq(), fx_config.patch(backed_size_oblivious=True), warnings.catch_warnings():
            # fairseq's positional convolution uses torch.nn.utils.weight_norm, whose hook sets the
            # `weight` attribute from weight_g and weight_v before each call: the program computes it
            # the same way from them, and torch.export warns about the attribute being set
            warnings.filterwarnings("ignore", message=r"The tensor attribute .*pos_conv.* was assigned during export")
            yield
    finally:
        for hook in hooks:
            hook.remove()


def export_program(encoder: BirqFeatureEncoder, path: str, example=None) -> torch.export.ExportedProgram:
    """``torch.export`` ``encoder`` with dynamic batch and time axes and save it to ``path`` (``torch.export.save``).

    Load it with ``torch.export.load(path).module()``: a module called as ``encoder`` is,
    ``(source (B, S), padding_mask (B, S)) -> (features (B, T', D), feature_padding_mask (B, T'))``,
    for any B >= 1 and S >= :func:`min_program_samples` (1520 at 16 kHz), on the device of
    ``encoder`` and ``example``.
    """
    example = example if example is not None else example_input(device=next(encoder.parameters()).device)
    min_samples = min_program_samples(encoder.model)
    if example[0].size(1) < min_samples:
        raise ValueError(f"the example batch is {example[0].size(1)} samples long; torch.export needs at least "
                         f"{min_samples} (two 40 ms frames)")
    encoder(*example)  # eagerly first: the model's checks on values (global normalisation statistics) run here
    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=min_samples)
    axes = {"source": {0: batch, 1: samples}, "padding_mask": {0: batch, 1: samples}}
    # enable_grad: torch.export records forward's no_grad only as a change of the grad mode, so the
    # program computes no gradients wherever it is called (even when this is called under no_grad).
    # Deferred runtime asserts: relations between frame counts that hold for every length (e.g. the
    # conv subsampling's output length is frames // 4, frames being a multiple of 4) but that torch's
    # symbolic shapes cannot prove are checked when the program runs, instead of failing the export.
    with exportable_encoder(encoder), torch.enable_grad():
        program = torch.export.export(encoder, example, dynamic_shapes=axes,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    torch.export.save(program, path)
    return program


def max_valid_difference(reference: Tuple[torch.Tensor, torch.Tensor], exported) -> float:
    """Largest |difference| over valid frames; raises if the padding masks or shapes differ."""
    ref_x, ref_pad = (t.detach().cpu() for t in reference)
    x, pad = (torch.as_tensor(t).cpu() for t in exported)
    if x.shape != ref_x.shape or not torch.equal(pad.bool(), ref_pad):
        raise AssertionError(f"exported output has shape {tuple(x.shape)} and a padding mask "
                             f"{'equal to' if torch.equal(pad.bool(), ref_pad) else 'unlike'} the model's "
                             f"(shape {tuple(ref_x.shape)})")
    valid = ~ref_pad
    return float((x[valid] - ref_x[valid]).abs().max())


# --------------------------------------------------------------------------- command line
def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a BiRQ encoder (waveform -> layer features) with torch.export, "
                       "or to TorchScript / ONNX")
    p.add_argument("--path", required=True, help="BiRQ checkpoint: pretraining, or finetuned (wav2vec_ctc) from one")
    p.add_argument("--layer", type=int, default=None,
                   help="output of transformer layer N (1-based, as dump-features); default: the final output")
    p.add_argument("--out", help="write the torch.export program here (.pt2; load it with "
                   "torch.export.load(PATH).module()): the default format")
    p.add_argument("--torchscript", help="also write a traced TorchScript module here (.pt; TorchScript is "
                   "deprecated in torch: prefer --out)")
    p.add_argument("--onnx", help="also write the ONNX model here (.onnx; needs pip install birq_fairseq[export])")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    p.add_argument("--device", default="cpu",
                   help="export on this device (the torch.export and TorchScript files run there)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |difference| from the fairseq model allowed on the check inputs (default 1e-4)")


def check_lengths(sample_rate: int) -> Tuple[Tuple[int, ...], ...]:
    """Batches of clip lengths the exported files are checked on: other lengths than the trace's."""
    return ((sample_rate,), (int(2.7 * sample_rate), int(1.3 * sample_rate), sample_rate // 2))


def run(args) -> int:
    if not (args.out or args.torchscript or args.onnx):
        raise SystemExit("birq-fairseq export: give --out PATH (a torch.export program) and/or --torchscript PATH, "
                         "--onnx PATH")
    model, task_cfg = load_birq_encoder(args.path)
    if bool(task_cfg.normalize):
        raise SystemExit(f"{args.path} was trained with task.normalize=true (waveform layer norm); the exported "
                         "encoder takes the waveform as it is: normalise each clip before calling it")
    encoder = BirqFeatureEncoder(model.to(args.device), args.layer)
    example = example_input(device=args.device)
    checks = [example_input(lengths, args.device, seed=i + 1) for i, lengths in
              enumerate(check_lengths(int(task_cfg.sample_rate)))]
    with torch.no_grad():
        references = [encoder(*batch) for batch in checks]
    for path in (args.out, args.torchscript, args.onnx):
        if path and os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.out:
        export_program(encoder, args.out, example)
        program = torch.export.load(args.out).module()  # the saved file, as a user loads it
        diff = max(max_valid_difference(ref, program(*batch)) for ref, batch in zip(references, checks))
        _report("torch.export", args.out, diff, args.tolerance)
    if args.torchscript:
        traced = export_torchscript(encoder, args.torchscript, example)
        with torch.no_grad():
            diff = max(max_valid_difference(ref, traced(*batch)) for ref, batch in zip(references, checks))
        _report("TorchScript", args.torchscript, diff, args.tolerance)
    if args.onnx:
        import onnxruntime  # the optional `export` extra: only --onnx needs it

        export_onnx(encoder, args.onnx, example, args.opset)
        session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
        diff = max(max_valid_difference(ref, session.run(None, {"source": batch[0].cpu().numpy(),
                                                                 "padding_mask": batch[1].cpu().numpy()}))
                   for ref, batch in zip(references, checks))
        _report("ONNX", args.onnx, diff, args.tolerance)
    return 0


def _report(kind: str, path: str, diff: float, tolerance: float) -> None:
    line = f"{kind}: {path} (max |difference| from the fairseq model on valid frames: {diff:.2e})"
    if diff > tolerance:
        raise SystemExit(f"{line} exceeds --tolerance {tolerance}")
    print(line)
