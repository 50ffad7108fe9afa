"""The tiny model's fairseq training update, built in-process: for profiling (profile_step.py)
and for the side-by-side of the old and new update paths (run.py part 7, issue #17).

Updates run through fairseq's own ``Trainer`` from examples/pretrain/tiny_birq.yaml, with the
data iterator in the training thread (``dataset.data_buffer_size=0``), so reading and
collating audio is part of the measured update (with fairseq's background thread it competes
for the same core anyway).
"""

import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The demo's batching (examples/demo/pipeline.py): 8 s of audio per update.
DEMO_MAX_TOKENS = 128000


def build_trainer(data: str, overrides: Sequence[str] = ()):
    """(cfg, fairseq Trainer, epoch iterator) of tiny_birq.yaml on the manifests in ``data``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fairseq import tasks, utils
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from fairseq.trainer import Trainer

    # fairseq-hydra-train's way: the FairseqConfig schema stored under the primary config's
    # name, merged under it by hydra's 1.1 behaviour.
    hydra_init("tiny_birq")
    with initialize_config_dir(config_dir=os.path.join(REPO, "examples", "pretrain"), version_base="1.1"):
        cfg = compose("tiny_birq", overrides=[
            f"common.user_dir={os.path.join(REPO, 'birq_fairseq')}", f"task.data={data}",
            f"dataset.max_tokens={DEMO_MAX_TOKENS}", "dataset.data_buffer_size=0", "dataset.disable_validation=true",
            "checkpoint.no_save=true", "common.log_interval=1000000", *overrides])
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    add_defaults(cfg)
    OmegaConf.set_struct(cfg, True)
    utils.import_user_module(cfg.common)
    # As fairseq_cli.train: seeded before anything is built, so equal configs build equal models.
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train", combine=False, epoch=1)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=False)
    return cfg, trainer, epoch_itr


def batches(trainer, epoch_itr):
    """Endless iterator of fairseq's grouped batches, as fairseq_cli.train's loop sees them."""
    from fairseq.data import iterators

    while True:
        itr = epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=True)
        itr = iterators.GroupedIterator(itr, 1)
        for samples in itr:
            yield samples
        epoch_itr = trainer.get_train_iterator(epoch=epoch_itr.next_epoch_idx, load_dataset=False)


# Paths of the update compared by ``compare``: the old one (fairseq's Adam loop and, through
# ``use_old_code``, torchaudio's power spectrogram), the new default, and the new one with 4x (8x)
# the audio per update and the lr scaled by sqrt(4) = 2 (sqrt(8)) (a different training run: a
# switch of the recipe, not a default; see the README).
UPDATE_PATHS = {
    "old": ["+task.multi_tensor_adam=false"],
    "new": [],
    "new+4x_batch": [f"dataset.max_tokens={4 * DEMO_MAX_TOKENS}", "optimization.lr=[0.002]"],
    "new+8x_batch": [f"dataset.max_tokens={8 * DEMO_MAX_TOKENS}", "optimization.lr=[0.00283]"],
}


def use_old_code(model) -> None:
    """Give ``model``'s front-end torchaudio's power spectrogram back (the code before 2026-12-05):
    ``Spectrogram(power=2)``, a complex abs then a square, instead of re^2 + im^2."""
    frontend = model.frontend
    # an instance attribute shadows the method (set past nn.Module, which would register a submodule)
    object.__setattr__(frontend, "power_spectrogram", lambda waveform: frontend.melspec.spectrogram(waveform))


def audio_seconds(samples, sample_rate: int = 16000) -> float:
    total = 0
    for sample in samples:
        source, padding = sample["net_input"]["source"], sample["net_input"].get("padding_mask")
        total += source.numel() - (int(padding.sum()) if padding is not None else 0)
    return total / sample_rate


def compare(data: str, systems=("bestrq", "birq"), paths: Dict[str, List[str]] = None, rounds: int = 10,
            warmup: int = 3, log=print) -> List[dict]:
    """Audio seconds per second of fairseq updates along each path, interleaved in one process.

    Every (system, path) gets its own trainer; each round runs one update (data fetch included)
    of each, the start rotated per round. Returns one row per (system, path): median audio s/s
    with min/max over rounds, and the median, min and max over rounds of the per-round ratio to
    the system's "old" path (load common to a round cancels in it).
    """
    paths = paths if paths is not None else UPDATE_PATHS
    runners = {}
    for system in systems:
        for name, over in paths.items():
            stream_over = [f"model.enhanced_stream={'true' if system == 'birq' else 'false'}", *over]
            _, trainer, epoch_itr = build_trainer(data, stream_over)
            if name == "old":
                use_old_code(trainer.model)
            stream = batches(trainer, epoch_itr)
            for _ in range(warmup):
                trainer.train_step(next(stream))
            runners[(system, name)] = (trainer, stream)
    speed = {key: [] for key in runners}
    keys = list(runners)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in order:
            trainer, stream = runners[key]
            start = time.perf_counter()
            samples = next(stream)
            trainer.train_step(samples)
            speed[key].append(audio_seconds(samples) / (time.perf_counter() - start))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{s}/{p} {speed[(s, p)][-1]:.0f}" for s, p in keys))
    rows = []
    for (system, name), values in speed.items():
        row = dict(system=system, path=name, overrides=paths[name], audio_per_s=statistics.median(values),
                   audio_per_s_min=min(values), audio_per_s_max=max(values), rounds=rounds)
        if (system, "old") in speed:
            ratios = [v / o for v, o in zip(values, speed[(system, "old")])]
            row.update(ratio_vs_old=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                       ratio_iqr=interquartile(ratios))
        rows.append(row)
    return rows


def interquartile(values: Sequence[float]) -> List[float]:
    """[first quartile, third quartile] of ``values``: the middle half of the rounds, which one slow
    or fast round (a batch of short clips, a burst of load) does not move as it moves min-max."""
    if len(values) < 2:
        return [values[0], values[0]]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q3]


def table(part: dict) -> str:
    """Markdown table of ``compare``'s rows (run.py part 7)."""
    out = [f"Part 7: tiny fairseq update (tiny_birq.yaml, {part['corpus']}), old vs new path, interleaved in one "
           f"process, {part['rows'][0]['rounds']} rounds; audio s/s median [min-max], ratio = median [min-max] "
           "(interquartile range) of per-round ratios to the old path",
           "| system | path | overrides | audio s/s | vs old |", "|---|---|---|---|---|"]
    for r in part["rows"]:
        ratio = (f"{r['ratio_vs_old']:.2f}x [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"
                 + (" (IQR {:.2f}-{:.2f})".format(*r["ratio_iqr"]) if "ratio_iqr" in r else "")
                 if "ratio_vs_old" in r else "")
        out.append(f"| {r['system']} | {r['path']} | {' '.join(r['overrides']) or '(defaults)'} | "
                   f"{r['audio_per_s']:.0f} [{r['audio_per_s_min']:.0f}-{r['audio_per_s_max']:.0f}] | {ratio} |")
    return "\n".join(out)
