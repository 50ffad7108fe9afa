"""``birq-fairseq wer`` / ``python -m birq_fairseq wer``: WER of a finetuned CTC checkpoint.

For users outside ``fairseq-generate``: loads the checkpoint with fairseq's
``checkpoint_utils`` (as fairseq-generate does), decodes a manifest split with the
same CTC decoders ``--task birq_finetuning`` builds for fairseq-generate, prints the
WER (editdistance over words, after the same ``--post-process`` as fairseq) and
writes hypotheses (and references) in manifest order.

    birq-fairseq wer --path ft/checkpoint_best.pt --data DATA --subset test \\
        [--decoder greedy|lexicon --lexicon lexicon.txt --kenlm-model 4gram.bin \\
         --beam 500 --lm-weight 2 --word-score -1] --out hyps.txt
"""

import argparse
import json
import os
from typing import Tuple

import editdistance
import torch
from fairseq import utils

from birq_fairseq.checkpoints import PLUGIN_DIR
from birq_fairseq.decoding import build_ctc_decoder
from birq_fairseq.loading import load_finetuned


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


def add_parser(sub) -> None:
    w = sub.add_parser("wer", help="decode a manifest split with a finetuned CTC checkpoint and print WER")
    w.add_argument("--path", required=True, help="finetuned checkpoint (wav2vec_ctc on a BiRQ/wav2vec2 encoder)")
    w.add_argument("--data", required=True, help="data dir with <subset>.tsv, <subset>.<labels>, dict.<labels>.txt")
    w.add_argument("--subset", default="test", help="split name (default: test)")
    w.add_argument("--labels", default=None, help="label extension (default: the checkpoint's, usually ltr)")
    w.add_argument("--user-dir", default=PLUGIN_DIR, help="fairseq user dir (default: this package)")
    w.add_argument("--post-process", default="letter", help="fairseq post-process of label strings (default letter)")
    w.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    w.add_argument("--out", default=None, help="write hypotheses here (one per line, manifest order); "
                   "references go to <out>.ref")
    w.add_argument("--json", action="store_true", help="print a JSON summary line as well")
    dev = w.add_mutually_exclusive_group()
    dev.add_argument("--cpu", dest="cpu", action="store_true", default=True, help="run on CPU (default)")
    dev.add_argument("--cuda", dest="cpu", action="store_false", help="run on GPU if available")
    _add_decoder_args(w)


def word_errors(ref: str, hyp: str) -> Tuple[int, int]:
    """``(word edit distance, reference words)`` of one utterance."""
    r, h = ref.split(), hyp.split()
    return editdistance.eval(r, h), len(r)


def run_wer(args) -> dict:
    """Decode ``args.subset`` and score it: a JSON-able summary (``wer`` in percent)."""
    task, models, model_cfg, use_cuda = load_finetuned(args.path, args.data, args.labels, args.user_dir, args.cpu)
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


def run(args) -> int:
    res = run_wer(args)
    print(f"{res['subset']}: {res['utterances']} utterances, {res['word_errors']} word errors / "
          f"{res['words']} words")
    print(f"WER: {res['wer']:.2f}")
    if args.json:
        print(json.dumps(res))
    if args.out:
        print(f"hypotheses: {args.out}  references: {args.out}.ref")
    return 0
