"""Issue #17: the faster update paths give the numbers of the old ones (no timing here).

task.multi_tensor_adam (default on) runs fairseq's fp32 Adam step as multi-tensor ops; it
must leave parameters, optimizer state and losses bit-for-bit those of fairseq's loop.
"""

import os
import sys
from types import SimpleNamespace

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples", "benchmarks"))

import birq_fairseq  # noqa: E402
from birq_fairseq import multi_tensor  # noqa: E402


def test_runs_this_checkout():
    assert os.path.dirname(os.path.abspath(birq_fairseq.__file__)) == os.path.join(REPO, "birq_fairseq")


def _fairseq_adam(params, weight_decay=0.01, amsgrad=False):
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

    cfg = FairseqAdamConfig(lr=[1e-3], adam_betas="(0.9,0.98)", adam_eps=1e-6, weight_decay=weight_decay)
    optimizer = FairseqAdam(cfg, params)
    for group in optimizer.optimizer.param_groups:
        group["amsgrad"] = amsgrad  # fairseq's Adam reads it per group; its config has no field
    return optimizer


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_step_bit_identical(weight_decay):
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    ref = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    new = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref, opt_new = _fairseq_adam(ref, weight_decay), _fairseq_adam(new, weight_decay)
    assert multi_tensor.supports(opt_new)
    for step in range(4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for a, b, grad in zip(ref, new, grads):
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 2:  # a parameter that misses an update keeps its own step count
            ref[1].grad = new[1].grad = None
        opt_ref.step()
        multi_tensor.adam_step(opt_new.optimizer)
        for a, b in zip(ref, new):
            assert torch.equal(a, b)
            sa, sb = opt_ref.optimizer.state[a], opt_new.optimizer.state[b]
            assert sa["step"] == sb["step"] and isinstance(sb["step"], int)
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # the state dict has fairseq's layout: either path resumes the other's checkpoint
    assert opt_ref.state_dict().keys() == opt_new.state_dict().keys()


def test_unsupported_optimizers_keep_fairseq_step():
    p = torch.nn.Parameter(torch.zeros(3))
    assert not multi_tensor.supports(_fairseq_adam([p], amsgrad=True))
    assert not multi_tensor.supports(SimpleNamespace(optimizer=torch.optim.Adam([p])))
    half = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    assert not multi_tensor.supports(_fairseq_adam([half]))


def _run(data, overrides, updates=3):
    from fairseq_update import batches, build_trainer

    _, trainer, epoch_itr = build_trainer(data, ["dataset.max_tokens=48000", *overrides])
    stream = batches(trainer, epoch_itr)
    losses = []
    for _ in range(updates):
        out = trainer.train_step(next(stream))
        losses.append(trainer.get_meter("train_loss").val if out is None else out["loss"])
    return losses, [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("system", ["bestrq", "birq"])
def test_fairseq_updates_identical_and_switch_routes(synth_data, system, monkeypatch):
    stream = [f"model.enhanced_stream={'true' if system == 'birq' else 'false'}"]
    calls = []
    real = multi_tensor.adam_step
    monkeypatch.setattr(multi_tensor, "adam_step", lambda adam: (calls.append(1), real(adam)))
    old_losses, old_params = _run(synth_data, stream + ["+task.multi_tensor_adam=false"])
    assert calls == []  # the switch off: fairseq's own loop
    new_losses, new_params = _run(synth_data, stream)
    assert len(calls) == 3  # the default: the multi-tensor step, every update
    assert old_losses == new_losses
    assert all(torch.equal(a, b) for a, b in zip(old_params, new_params))


def test_compare_rows_and_table(synth_data, monkeypatch):
    """run.py part 7's side-by-side: one row per (system, path), ratios to the old path, a table;
    only the old path runs the old code (torchaudio's power spectrogram)."""
    import torchaudio

    import fairseq_update as U

    spectrogram_calls = []
    real_forward = torchaudio.transforms.Spectrogram.forward
    monkeypatch.setattr(torchaudio.transforms.Spectrogram, "forward",
                        lambda self, x: (spectrogram_calls.append(1), real_forward(self, x))[1])
    paths = {"old": U.UPDATE_PATHS["old"], "new": U.UPDATE_PATHS["new"]}
    rows = U.compare(synth_data, systems=("bestrq",), paths={"new": paths["new"]}, rounds=2, warmup=0,
                     log=lambda *_: None)
    assert spectrogram_calls == []  # the default front-end squares re and im itself
    rows = U.compare(synth_data, systems=("bestrq",), paths=paths, rounds=2, warmup=0, log=lambda *_: None)
    assert len(spectrogram_calls) == 2  # one per round of the old path
    assert [(r["system"], r["path"]) for r in rows] == [("bestrq", "old"), ("bestrq", "new")]
    assert all(r["audio_per_s"] > 0 and r["audio_per_s_min"] <= r["audio_per_s"] <= r["audio_per_s_max"]
               for r in rows)
    assert rows[0]["ratio_vs_old"] == 1.0 and rows[1]["ratio_min"] <= rows[1]["ratio_vs_old"] <= rows[1]["ratio_max"]
    q1, q3 = rows[1]["ratio_iqr"]
    assert rows[1]["ratio_min"] <= q1 <= rows[1]["ratio_vs_old"] <= q3 <= rows[1]["ratio_max"]
    assert U.interquartile([1.0, 2.0, 3.0, 4.0, 5.0]) == [2.0, 4.0] and U.interquartile([1.5]) == [1.5, 1.5]
    text = U.table({"corpus": "synthetic", "rows": rows})
    assert "| bestrq | new | (defaults) |" in text and "+task.multi_tensor_adam=false" in text
