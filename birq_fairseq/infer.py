"""``birq-fairseq-infer`` / ``python -m birq_fairseq.infer``: fairseq's ``infer.py`` command line, working.

fairseq's evaluation script ``examples/speech_recognition/new/infer.py`` (the one
wav2vec 2.0 users have in their scripts) dies at import on Python 3.11 (``mutable
default <class 'DecodingConfig'> for field decoding is not allowed``) and needs a
fairseq checkout on ``PYTHONPATH``. This is a port of it that takes the same hydra
config and keys and writes the same files::

    birq-fairseq-infer --config-dir CONF --config-name infer \\
        task=audio_finetuning task.data=DATA task.labels=ltr common_eval.path=ft/checkpoint_best.pt \\
        dataset.gen_subset=test common.cpu=true \\
        decoding.type=viterbi|kenlm [decoding.lexicon=lexicon.txt decoding.lmpath=4gram.bin \\
        decoding.beam=500 decoding.lmweight=2 decoding.wordscore=-1 decoding.silweight=0] \\
        common_eval.results_path=RESULTS [decoding.results_path=DIR] [common.user_dir=...]

What is fairseq's and what is ours:

* The config is fairseq's: ``DecoderConfig``/``FlashlightDecoderConfig`` are loaded from
  the installed fairseq's ``decoders/decoder_config.py``; ``InferConfig`` is infer.py's with
  ``field(default_factory=...)`` (the Python 3.11 fix); ``--config-name infer`` is
  ``birq_fairseq/config/infer.yaml`` (fairseq's file without its stale ``common.user_dir``).
* ``InferenceProcessor`` is infer.py's, with the decoder swapped: ``decoding.type=viterbi``
  is the greedy CTC decoder and ``decoding.type=kenlm`` the lexicon beam search (torchaudio's
  flashlight-text decoder, optional KenLM ``decoding.lmpath``) of ``birq_fairseq.decoding``,
  the ones ``fairseq-generate --task birq_finetuning`` uses; the task is ``birq_finetuning``
  built from the command line's ``task=`` (``audio_finetuning`` configs carry over), so
  labels are checked and no partial batch is dropped.
* Outputs as infer.py: ``hypo.word``, ``hypo.units``, ``ref.word``, ``ref.units`` (one
  ``text (None-<id>)`` line per utterance) and ``wer`` in ``decoding.results_path``, and
  the log line ``Word error rate: X``. infer.py writes only ``wer`` (into its hydra run dir,
  ``common_eval.results_path/<gen_subset>``) when ``decoding.results_path`` is unset; here
  the hypothesis files go there too. Without either results path nothing is written.

Not ported: multi-process decoding (``distributed_training.distributed_world_size > 1``),
``decoding.type=fairseqlm``, lexicon-free unit-LM decoding, MMS adapters, ax sweeps.
"""

import ast
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Dict, List, Optional, Tuple

import editdistance
import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, OmegaConf

import birq_fairseq  # noqa: F401  registers birq_finetuning (and its config) before hydra composes
from birq_fairseq.checkpoints import CheckpointError, require_finetuned
from birq_fairseq.decoding import build_ctc_decoder
from birq_fairseq.loading import finetuning_task, load_finetuned_models, read_checkpoint

import fairseq
from fairseq import progress_bar, utils
from fairseq.data.data_utils import post_process
from fairseq.dataclass.configs import (
    CheckpointConfig,
    CommonConfig,
    CommonEvalConfig,
    DatasetConfig,
    DistributedTrainingConfig,
    FairseqDataclass,
)
from fairseq.logging.meters import StopwatchMeter, TimeMeter

logger = logging.getLogger("birq_fairseq.infer")

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
FAIRSEQ_DECODER_CONFIG = os.path.join(
    os.path.dirname(fairseq.__file__), "examples", "speech_recognition", "new", "decoders", "decoder_config.py"
)


def _fairseq_decoder_configs():
    """fairseq's ``DecoderConfig`` and ``FlashlightDecoderConfig``, loaded from their file.

    Importing them as ``fairseq.examples.speech_recognition...`` runs that package's
    ``__init__``, which imports ``examples.*`` (a fairseq checkout on sys.path); the
    file itself needs only fairseq.
    """
    if not os.path.isfile(FAIRSEQ_DECODER_CONFIG):
        raise ImportError(f"{FAIRSEQ_DECODER_CONFIG} not found: this fairseq install has no examples/ package data")
    name = "birq_fairseq._fairseq_decoder_config"
    spec = importlib.util.spec_from_file_location(name, FAIRSEQ_DECODER_CONFIG)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.DecoderConfig, module.FlashlightDecoderConfig


DecoderConfig, FlashlightDecoderConfig = _fairseq_decoder_configs()


@dataclass
class DecodingConfig(DecoderConfig, FlashlightDecoderConfig):
    unique_wer_file: bool = field(
        default=False,
        metadata={"help": "If set, use a unique file for storing WER"},
    )
    results_path: Optional[str] = field(
        default=None,
        metadata={"help": "If set, write hypothesis and reference sentences into this directory"},
    )


@dataclass
class InferConfig(FairseqDataclass):
    """infer.py's ``InferConfig``; dataclass defaults are factories (Python >= 3.11 refuses instances)."""

    # MISSING rather than infer.py's None: hydra >= 1.1 merges the primary config (and this schema)
    # after the defaults list unless it names _self_, and a None would erase `task=audio_finetuning`
    task: Any = MISSING
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    common: CommonConfig = field(default_factory=CommonConfig)
    common_eval: CommonEvalConfig = field(default_factory=CommonEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed_training: DistributedTrainingConfig = field(default_factory=DistributedTrainingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    is_ax: bool = field(
        default=False,
        metadata={"help": "if true, assumes we are using ax for tuning and returns a tuple for ax to consume"},
    )


def build_decoder(decoding, tgt_dict):
    """infer.py's ``Decoder(cfg.decoding, tgt_dict)`` on this project's CTC decoders.

    ``viterbi`` -> greedy best path; ``kenlm`` -> lexicon beam search with
    ``decoding.lexicon`` and, when set, the KenLM model ``decoding.lmpath``.
    """
    kind = str(decoding.type)
    if kind == "viterbi":
        return build_ctc_decoder(tgt_dict, "greedy")
    if kind == "kenlm":
        if not decoding.lexicon:
            raise ValueError("decoding.type=kenlm needs decoding.lexicon=FILE ('WORD<TAB>W O R D |' per line); "
                             "lexicon-free unit-LM decoding is not supported")
        # lmpath is MISSING ("???") in fairseq's config unless given: lexicon-only beam search then
        missing = OmegaConf.is_missing(decoding, "lmpath") if OmegaConf.is_config(decoding) else False
        lmpath = None if missing or getattr(decoding, "lmpath", None) in (None, "???") else decoding.lmpath
        return build_ctc_decoder(
            tgt_dict, "lexicon", lexicon=decoding.lexicon, kenlm_model=lmpath,
            beam=int(decoding.beam), nbest=int(decoding.nbest), beam_size_token=decoding.beamsizetoken,
            beam_threshold=float(decoding.beamthreshold), lm_weight=float(decoding.lmweight),
            word_score=float(decoding.wordscore), unk_score=float(decoding.unkweight),
            sil_score=float(decoding.silweight),
        )
    raise ValueError(f"decoding.type={kind} is not supported here; use viterbi or kenlm")


def results_dir(cfg) -> Optional[str]:
    """Where hypotheses and ``wer`` go: ``decoding.results_path``, else the hydra run dir when it is the results dir."""
    if cfg.decoding.results_path is not None:
        return cfg.decoding.results_path
    if cfg.common_eval.results_path is not None:
        if HydraConfig.initialized():  # the run dir infer.py writes its wer file to
            return HydraConfig.get().runtime.output_dir
        return os.path.join(cfg.common_eval.results_path, str(cfg.dataset.gen_subset))
    return None


class InferenceProcessor:
    """infer.py's ``InferenceProcessor`` (one process), on ``birq_finetuning`` and ``birq_fairseq.decoding``."""

    cfg: InferConfig

    def __init__(self, cfg: InferConfig) -> None:
        self.cfg = cfg
        paths = utils.split_paths(cfg.common_eval.path, separator="\\")
        for path in paths:  # a pretraining / foreign checkpoint: one line naming it and the fix
            state = read_checkpoint(path, require_finetuned)
            if "adapter" in state:
                raise ValueError(f"{path}: checkpoints with MMS adapters are not supported by birq-fairseq-infer")
            saved_task = state["cfg"].task
            del state  # the weights are read again by load_model_ensemble, as in infer.py
        if OmegaConf.is_missing(cfg, "task") or cfg.task is None:
            raise ValueError("no task: add task=audio_finetuning task.data=DATA (as with fairseq's infer.py)")
        self.task = finetuning_task(cfg.task, saved_task)

        self.models, self.saved_cfg = self.load_model_ensemble(paths)
        self.tgt_dict = self.task.target_dictionary
        self.task.load_dataset(self.cfg.dataset.gen_subset, task_cfg=self.saved_cfg.task)
        self.generator = build_decoder(cfg.decoding, self.tgt_dict)
        self.gen_timer = StopwatchMeter()
        self.wps_meter = TimeMeter()
        self.num_sentences = 0
        self.total_errors = 0
        self.total_length = 0
        self.results_path = results_dir(cfg)
        self.files = {}
        self.progress_bar = progress_bar.progress_bar(
            iterator=self.get_dataset_itr(),
            log_format=cfg.common.log_format,
            log_interval=cfg.common.log_interval,
            tensorboard_logdir=cfg.common.tensorboard_logdir,
            default_log_format="tqdm",
        )

    def __enter__(self) -> "InferenceProcessor":
        if self.results_path is not None:
            os.makedirs(self.results_path, exist_ok=True)
            for name in ("hypo.word", "hypo.units", "ref.word", "ref.units"):
                self.files[name] = open(os.path.join(self.results_path, name), "w", buffering=1)
        return self

    def __exit__(self, *exc) -> bool:
        for f in self.files.values():
            f.close()
        return False

    def __iter__(self):
        for sample in self.progress_bar:
            if not self.cfg.common.cpu:
                sample = utils.move_to_cuda(sample)
            if "net_input" not in sample:  # happens on the last batch
                continue
            yield sample

    def optimize_model(self, model) -> None:
        model.make_generation_fast_()
        if self.cfg.common.fp16:
            model.half()
        if not self.cfg.common.cpu:
            model.cuda()

    def load_model_ensemble(self, paths: List[str]):
        arg_overrides = ast.literal_eval(self.cfg.common_eval.model_overrides)
        models, saved_cfg = load_finetuned_models(
            paths,
            self.task,
            arg_overrides=arg_overrides,
            suffix=self.cfg.checkpoint.checkpoint_suffix,
            strict=(self.cfg.checkpoint.checkpoint_shard_count == 1),
            num_shards=self.cfg.checkpoint.checkpoint_shard_count,
        )
        for model in models:
            self.optimize_model(model)
        return models, saved_cfg

    def get_dataset_itr(self):
        return self.task.get_batch_iterator(
            dataset=self.task.dataset(self.cfg.dataset.gen_subset),
            max_tokens=self.cfg.dataset.max_tokens,
            max_sentences=self.cfg.dataset.batch_size,
            max_positions=(sys.maxsize, sys.maxsize),
            ignore_invalid_inputs=self.cfg.dataset.skip_invalid_size_inputs_valid_test,
            required_batch_size_multiple=self.cfg.dataset.required_batch_size_multiple,
            seed=self.cfg.common.seed,
            num_workers=self.cfg.dataset.num_workers,
            data_buffer_size=self.cfg.dataset.data_buffer_size,
        ).next_epoch_itr(shuffle=False)

    def process_sentence(self, sample: Dict[str, Any], hypo: Dict[str, Any], sid: int, batch_id: int) -> Tuple[int, int]:
        speaker = None  # Speaker can't be parsed from dataset.
        toks = sample["target_label"] if "target_label" in sample else sample["target"]
        toks = toks[batch_id, :]

        hyp_pieces = self.tgt_dict.string(hypo["tokens"].int().cpu())
        # infer.py takes the words of a lexicon decoder's hypothesis, and post-processes the
        # viterbi one's letters (our greedy decoder also lists words: same text, same rule here)
        if "words" in hypo and str(self.cfg.decoding.type) != "viterbi":
            hyp_words = " ".join(hypo["words"])
        else:
            hyp_words = post_process(hyp_pieces, self.cfg.common_eval.post_process)

        target_tokens = utils.strip_pad(toks, self.tgt_dict.pad())
        tgt_pieces = self.tgt_dict.string(target_tokens.int().cpu())
        tgt_words = post_process(tgt_pieces, self.cfg.common_eval.post_process)

        if self.files:
            print(f"{hyp_pieces} ({speaker}-{sid})", file=self.files["hypo.units"])
            print(f"{hyp_words} ({speaker}-{sid})", file=self.files["hypo.word"])
            print(f"{tgt_pieces} ({speaker}-{sid})", file=self.files["ref.units"])
            print(f"{tgt_words} ({speaker}-{sid})", file=self.files["ref.word"])

        if not self.cfg.common_eval.quiet:
            logger.info(f"HYPO: {hyp_words}")
            logger.info(f"REF: {tgt_words}")
            logger.info("---------------------")

        hyp_words, tgt_words = hyp_words.split(), tgt_words.split()
        return editdistance.eval(hyp_words, tgt_words), len(tgt_words)

    def process_sample(self, sample: Dict[str, Any]) -> None:
        self.gen_timer.start()
        hypos = self.task.inference_step(generator=self.generator, models=self.models, sample=sample)
        num_generated_tokens = sum(len(h[0]["tokens"]) for h in hypos)
        self.gen_timer.stop(num_generated_tokens)
        self.wps_meter.update(num_generated_tokens)

        for batch_id, sample_id in enumerate(sample["id"].tolist()):
            errs, length = self.process_sentence(sample=sample, sid=sample_id, batch_id=batch_id,
                                                 hypo=hypos[batch_id][0])
            self.total_errors += errs
            self.total_length += length

        self.progress_bar.log({"wps": round(self.wps_meter.avg)})
        self.num_sentences += sample["nsentences"] if "nsentences" in sample else sample["id"].numel()

    def log_generation_time(self) -> None:
        logger.info(
            "Processed %d sentences (%d tokens) in %.1fs %.2f sentences per second, %.2f tokens per second)",
            self.num_sentences, self.gen_timer.n, self.gen_timer.sum,
            self.num_sentences / (self.gen_timer.sum + 1e-6), 1.0 / (self.gen_timer.avg + 1e-6),
        )


def get_wer_file(cfg) -> Optional[str]:
    """infer.py's ``wer`` file (``wer.<hash of the decoding config>`` with ``decoding.unique_wer_file``)."""
    base = results_dir(cfg)
    if base is None:
        return None
    path = os.path.join(base, "wer")
    if cfg.decoding.unique_wer_file:
        fid = int(hashlib.md5(OmegaConf.to_yaml(cfg.decoding).encode("utf-8")).hexdigest(), 16)
        path = f"{path}.{fid % 1000000}"
    return path


def main(cfg) -> float:
    """Decode ``dataset.gen_subset`` with ``common_eval.path``; return the WER (percent)."""
    if cfg.distributed_training.distributed_world_size > 1:
        raise ValueError("birq-fairseq-infer decodes in one process: drop distributed_training.distributed_world_size")
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        cfg.dataset.max_tokens = 4000000
    if not cfg.common.cpu and not torch.cuda.is_available():
        raise ValueError("CUDA not found; add common.cpu=true to run without CUDA")
    logger.info(cfg.common_eval.path)

    with InferenceProcessor(cfg) as processor:
        with torch.no_grad():
            for sample in processor:
                processor.process_sample(sample)
        processor.log_generation_time()
        errs_t, leng_t = processor.total_errors, processor.total_length

    wer = errs_t * 100.0 / leng_t if leng_t else float("inf")
    wer_file = get_wer_file(cfg)
    if wer_file is not None:
        with open(wer_file, "w") as f:
            f.write(f"WER: {wer}\nerr / num_ref_words = {errs_t} / {leng_t}\n\n{OmegaConf.to_yaml(cfg.decoding)}")
    return wer


def hydra_main(cfg) -> float:
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    cfg = OmegaConf.create(container)
    OmegaConf.set_struct(cfg, True)
    if cfg.common.user_dir:
        utils.import_user_module(cfg.common)
    try:
        wer = main(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as e:  # wrong input: one line, no traceback
        if cfg.common.suppress_crashes:
            logger.error("Crashed! %s", e)
            wer = float("inf")
        else:
            print(f"birq-fairseq-infer: error: {e}", file=sys.stderr)
            sys.exit(1)
    logger.info("Word error rate: %.4f", wer)
    return (wer, None) if cfg.is_ax else wer


def without_group_package(config_dir: str, config_name: str) -> str:
    """``config_dir``, or a copy of it whose ``config_name.yaml`` lost its ``# @package _group_`` line.

    fairseq's own ``conf/infer.yaml`` starts with that line, which hydra < 1.1 ignored in a
    primary config and hydra >= 1.1 reads as a package named ``_group_`` (``task=...`` then
    fails with "Could not override 'task'"). The user's file is left untouched.
    """
    path = os.path.join(config_dir, config_name + ("" if config_name.endswith(".yaml") else ".yaml"))
    if not os.path.isfile(path):
        return config_dir
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    header = [i for i, line in enumerate(lines[:5]) if line.replace(" ", "").strip() == "#@package_group_"]
    if not header:
        return config_dir
    copy = os.path.join(tempfile.mkdtemp(prefix="birq_infer_conf_"), "conf")
    shutil.copytree(config_dir, copy)
    with open(os.path.join(copy, os.path.basename(path)), "w", encoding="utf-8") as f:
        f.writelines(line for i, line in enumerate(lines) if i not in header)
    return copy


def cli_main(argv: Optional[List[str]] = None) -> None:
    """Register the configs as infer.py does, then hand the command line to hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg_name = "infer"
    if "--config-name" in argv[:-1]:
        cfg_name = argv[argv.index("--config-name") + 1]
    if "--config-dir" in argv[:-1]:
        i = argv.index("--config-dir") + 1
        argv[i] = without_group_package(argv[i], cfg_name)
    cs = ConfigStore.instance()
    cs.store(name=cfg_name, node=InferConfig)
    for k, f in InferConfig.__dataclass_fields__.items():
        if is_dataclass(f.type):
            cs.store(name=k, node=f.default_factory())
    # infer.py's run dir is common_eval.results_path/<gen_subset>; without a results path
    # hydra would create "None/<subset>": stay in the working directory and write nothing there.
    if not any(a.startswith(("common_eval.results_path=", "hydra.run.dir=", "hydra.sweep.dir=")) for a in argv):
        argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    kwargs = {}
    if tuple(int(x) for x in hydra.__version__.split(".")[:2]) >= (1, 2):
        # stay in the working directory (relative task.data / results paths mean what they say);
        # hydra < 1.2, as infer.py was written for, changes into the run dir
        kwargs["version_base"] = "1.2"
    sys.argv = [sys.argv[0]] + argv
    hydra.main(config_path=CONFIG_DIR, config_name="infer", **kwargs)(hydra_main)()


if __name__ == "__main__":
    cli_main()
