"""Task `birq_pretraining`: fairseq's audio pretraining task with checked audio manifests."""

import logging
import os
from dataclasses import dataclass, field

from fairseq.data.text_compressor import TextCompressionLevel
from fairseq.tasks import register_task
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask

from .. import multi_tensor
from ..data.audio import CheckedFileAudioDataset
from ..modules.frontend import min_samples_for_one_step

logger = logging.getLogger(__name__)


@dataclass
class BirqPretrainingConfig(AudioPretrainingConfig):
    check_audio_headers: bool = field(
        default=True,
        metadata={"help": "read every file's header at load time (exists, readable, mono, sample rate, "
                  "sample count matches the manifest)"},
    )
    skip_invalid_audio: bool = field(
        default=False,
        metadata={"help": "skip and count invalid manifest lines / unreadable files instead of stopping"},
    )
    resample_audio: bool = field(
        default=False, metadata={"help": "resample audio whose rate differs from task.sample_rate"}
    )
    multi_tensor_adam: bool = field(
        default=True,
        metadata={"help": "run fairseq's fp32 Adam step as multi-tensor ops (birq_fairseq/multi_tensor.py): "
                  "bit-identical parameters, fewer per-parameter ops; false = fairseq's loop (the old path)"},
    )


@register_task("birq_pretraining", dataclass=BirqPretrainingConfig)
class BirqPretrainingTask(AudioPretrainingTask):
    cfg: BirqPretrainingConfig

    def optimizer_step(self, optimizer, model, update_num):
        if getattr(self.cfg, "multi_tensor_adam", False) and multi_tensor.supports(optimizer):
            multi_tensor.adam_step(optimizer.optimizer)  # what optimizer.step() does, in fewer ops
        else:
            super().optimizer_step(optimizer, model, update_num)
        # v^ advances once per update, on every rank (fairseq's wrappers forward the attribute)
        baseline = getattr(model, "penalty_baseline", None)
        if baseline is not None:
            baseline.commit()

    def load_dataset(self, split: str, task_cfg: BirqPretrainingConfig = None, **kwargs):
        task_cfg = task_cfg or self.cfg
        if getattr(task_cfg, "binarized_dataset", False) or getattr(task_cfg, "multi_corpus_keys", None):
            return super().load_dataset(split, task_cfg, **kwargs)

        manifest_path = os.path.join(self.cfg.data, f"{split}.tsv")
        sample_rate = task_cfg.get("sample_rate", self.cfg.sample_rate)
        self.datasets[split] = CheckedFileAudioDataset(
            manifest_path=manifest_path,
            sample_rate=sample_rate,
            min_audio_samples=min_samples_for_one_step(sample_rate),
            check_headers=getattr(task_cfg, "check_audio_headers", True),
            skip_invalid=getattr(task_cfg, "skip_invalid_audio", False),
            resample=getattr(task_cfg, "resample_audio", False),
            max_sample_size=self.cfg.max_sample_size,
            min_sample_size=self.cfg.min_sample_size,
            pad=task_cfg.labels is not None or task_cfg.enable_padding,
            normalize=task_cfg.normalize,
            num_buckets=self.cfg.num_batch_buckets or int(self.cfg.tpu),
            text_compression_level=getattr(TextCompressionLevel, str(self.cfg.text_compression_level)),
        )
