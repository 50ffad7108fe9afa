"""``python -m birq_fairseq wer`` / ``birq-fairseq wer``: WER of a finetuned CTC checkpoint.

For users outside ``fairseq-generate``: loads the checkpoint with fairseq's
``checkpoint_utils`` (as fairseq-generate does), decodes a manifest split with the
same CTC decoders ``--task birq_finetuning`` builds for fairseq-generate, prints the
WER (editdistance over words, after the same ``--post-process`` as fairseq) and
writes hypotheses (and references) in manifest order.

    python -m birq_fairseq wer --path ft/checkpoint_best.pt --data DATA --subset test \\
        [--decoder greedy|lexicon --lexicon lexicon.txt --kenlm-model 4gram.bin \\
         --beam 500 --lm-weight 2 --word-score -1] --out hyps.txt
"""

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

logger = logging.getLogger("birq_fairseq.cli")

PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _add_decoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (same decoders as fairseq-generate --task birq_finetuning)")
    g.add_argument("--decoder", choices=["greedy", "lexicon"], default="greedy",
                   help="greedy best path, or lexicon-constrained beam search (flashlight-text)")
    g.add_argument("--lexicon", help="lexicon file: 'WORD<TAB>W O R D |' per line (--decoder lexicon)")
    g.add_argument("--kenlm-model", help="KenLM .arpa/.bin over lexicon words (--decoder lexicon)")
    g.add_argument("--beam", type=int, default=50, help="beam size (default 50)")
    g.add_argument("--nbest", type=int, default=1, help=argparse.SUPPRESS)
    g.add_argument("--beam-size-token", type=int, default=None, help="tokens considered per frame (default all)")
    g.add_argument("--beam-threshold", type=float, default=25.0, help="beam pruning threshold")
    g.add_argument("--lm-weight", type=float, default=2.0, help="KenLM weight (used only with --kenlm-model)")
    g.add_argument("--word-score", type=float, default=0.0, help="word insertion score")
    g.add_argument("--unk-score", type=float, default=float("-inf"), help="unknown word score")
    g.add_argument("--sil-score", type=float, default=0.0, help="silence insertion score")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birq-fairseq", description="BiRQ fairseq plugin tools")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wer", help="decode a manifest split with a finetuned CTC checkpoint and print WER")
    w.add_argument("--path", required=True, help="finetuned checkpoint (wav2vec_ctc on a BiRQ/wav2vec2 encoder)")
    w.add_argument("--data", required=True, help="data dir with <subset>.tsv, <subset>.<labels>, dict.<labels>.txt")
    w.add_argument("--subset", default="test", help="split name (default: test)")
    w.add_argument("--labels", default=None, help="label extension (default: the checkpoint's, usually ltr)")
    w.add_argument("--user-dir", default=PKG_DIR, help="fairseq user dir (default: this package)")
    w.add_argument("--post-process", default="letter", help="fairseq post-process of label strings (default letter)")
    w.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    w.add_argument("--out", default=None, help="write hypotheses here (one per line, manifest order); "
                   "references go to <out>.ref")
    w.add_argument("--json", action="store_true", help="print a JSON summary line as well")
    dev = w.add_mutually_exclusive_group()
    dev.add_argument("--cpu", dest="cpu", action="store_true", default=True, help="run on CPU (default)")
    dev.add_argument("--cuda", dest="cpu", action="store_false", help="run on GPU if available")
    _add_decoder_args(w)
    from birq_fairseq import export, features

    features.add_parser(sub)  # dump-features: layer features for HuBERT's simple_kmeans
    export.add_parser(sub)  # export: TorchScript / ONNX encoder
    from birq_fairseq import probe

    probe.add_parser(sub)  # probe: PNMI / purity of the pretraining codes against aligned characters
    return parser


def load_task_and_models(path: str, data: str, user_dir: Optional[str], labels: Optional[str] = None, cpu: bool = True):
    """Build the ``birq_finetuning`` task for ``data`` from the checkpoint's task config and load the model."""
    from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals

    allow_fairseq_checkpoint_globals()
    from fairseq import checkpoint_utils, tasks, utils

    if user_dir:
        utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    # register our task even if the package was imported before --user-dir was processed
    import birq_fairseq.tasks  # noqa: F401
    from birq_fairseq.tasks.birq_finetuning import finetuning_task_config

    from birq_fairseq.checkpoints import require_finetuned

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    require_finetuned(path, state)  # a pretraining / foreign checkpoint: one line naming it and the fix
    saved_cfg = state["cfg"]
    overrides = {"data": os.path.abspath(data)}
    if labels:
        overrides["labels"] = labels
    task = tasks.setup_task(finetuning_task_config(saved_cfg.task, **overrides))
    models, model_cfg = checkpoint_utils.load_model_ensemble(
        [path], arg_overrides={"data": os.path.abspath(data)}, task=task, state=state
    )
    use_cuda = (not cpu) and __import__("torch").cuda.is_available()
    for m in models:
        m.eval()
        if use_cuda:
            m.cuda()
    return task, models, model_cfg, use_cuda


def word_errors(ref: str, hyp: str):
    import editdistance

    r, h = ref.split(), hyp.split()
    return editdistance.eval(r, h), len(r)


def run_wer(args) -> dict:
    import torch
    from fairseq import utils

    from birq_fairseq.decoding import build_ctc_decoder

    task, models, model_cfg, use_cuda = load_task_and_models(args.path, args.data, args.user_dir, args.labels, args.cpu)
    task.load_dataset(args.subset, task_cfg=task.cfg)
    dataset = task.dataset(args.subset)
    tgt_dict = task.target_dictionary
    generator = build_ctc_decoder(
        tgt_dict,
        decoder=args.decoder,
        lexicon=args.lexicon,
        kenlm_model=args.kenlm_model,
        beam=args.beam,
        nbest=args.nbest,
        beam_size_token=args.beam_size_token,
        beam_threshold=args.beam_threshold,
        lm_weight=args.lm_weight,
        word_score=args.word_score,
        unk_score=args.unk_score,
        sil_score=args.sil_score,
    )
    strip = generator.symbols_to_strip_from_output
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_sentences=args.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
        ignore_invalid_inputs=False,
        required_batch_size_multiple=1,
        num_workers=0,
    ).next_epoch_itr(shuffle=False)

    hyps, refs = {}, {}
    with torch.no_grad():
        for sample in itr:
            if not sample or "net_input" not in sample:
                continue
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            out = generator.generate(models, sample)
            for i, sid in enumerate(sample["id"].tolist()):
                target = utils.strip_pad(sample["target"][i], tgt_dict.pad()).int().cpu()
                # exactly the strings fairseq-generate prints on its T-/H- lines
                refs[sid] = tgt_dict.string(target, args.post_process, escape_unk=True, extra_symbols_to_ignore=strip)
                hyps[sid] = tgt_dict.string(out[i][0]["tokens"].int().cpu(), args.post_process,
                                            extra_symbols_to_ignore=strip)
    errors = words = 0
    for sid in refs:
        e, n = word_errors(refs[sid], hyps[sid])
        errors += e
        words += n
    wer = 100.0 * errors / words if words else 0.0
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        ids = sorted(hyps)
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(hyps[i] + "\n" for i in ids)
        with open(args.out + ".ref", "w", encoding="utf-8") as f:
            f.writelines(refs[i] + "\n" for i in ids)
    return {"subset": args.subset, "utterances": len(refs), "word_errors": errors, "words": words, "wer": wer,
            "decoder": args.decoder}


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "WARNING").upper(), stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.command == "wer":
        from birq_fairseq.checkpoints import CheckpointError

        try:
            res = run_wer(args)
        except (CheckpointError, FileNotFoundError) as e:  # wrong or missing input: one line, no traceback
            print(f"birq-fairseq wer: error: {e}", file=sys.stderr)
            return 1
        print(f"{res['subset']}: {res['utterances']} utterances, {res['word_errors']} word errors / "
              f"{res['words']} words")
        print(f"WER: {res['wer']:.2f}")
        if args.json:
            print(json.dumps(res))
        if args.out:
            print(f"hypotheses: {args.out}  references: {args.out}.ref")
        return 0
    if args.command in ("dump-features", "export"):
        from birq_fairseq import export, features
        from birq_fairseq.checkpoints import CheckpointError

        tool = features if args.command == "dump-features" else export
        try:
            return tool.run(args)
        except (CheckpointError, FileNotFoundError, ValueError) as e:  # bad input: one line naming it
            print(f"birq-fairseq {args.command}: error: {e}", file=sys.stderr)
            return 1
    if args.command == "probe":
        from birq_fairseq import probe

        try:
            return probe.run(args)
        except (FileNotFoundError, ValueError) as e:  # bad input (wrong checkpoint included): one line naming it
            print(f"birq-fairseq probe: error: {e}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
