#!/usr/bin/env python
"""Write fairseq letter/word labels (<split>.ltr, <split>.wrd, dict.ltr.txt), optionally phonemes (.phn).

Transcripts (--transcripts) are either `path<TAB>text` lines (path relative to
the manifest root, with or without extension, or absolute; any order unless
--strict-order) or plain text with one transcript per manifest line, in order.
Text is upper-cased and reduced to A-Z, apostrophe and space. Example:

    python manifests/make_labels.py data/manifest/train.tsv \\
        --transcripts transcripts.tsv --output-dir data/manifest --dict

--phonemes also writes <split>.phn (and with --dict or --phoneme-dict, dict.phn.txt), for phoneme
recognition (`birq-fairseq superb --task pr`): the espeak-ng IPA of each normalised
transcript, one line per manifest entry, phonemes separated by spaces. The phoneme
set is normalised as follows (birq_fairseq/data/phonemes.py):
  - the transcript is lower-cased (espeak-ng spells all-capital words letter by letter);
  - `espeak-ng -q --ipa --sep=_ -v en-us`: the IPA of `espeak-ng -q --ipa -v en-us`, cut
    into espeak's own phonemes, so affricates, diphthongs, long and r-coloured vowels
    are single symbols (tʃ, aɪ, uː, ɑːɹ);
  - stress marks (ˈ ˌ), tie bars, zero-width joiners and language tags like (fr) are
    removed; length marks (ː) stay with their vowel;
  - no word-boundary symbol: PER is scored on the phoneme sequence, as in SUPERB's PR.
Make dict.phn.txt from the training split (the one the downstream learns from);
--phoneme-dict writes it without rewriting dict.ltr.txt. An existing .wrd file serves as
the transcripts (one line per manifest entry), e.g.

    python manifests/make_labels.py DATA/finetune.tsv --transcripts DATA/finetune.wrd --phonemes --phoneme-dict
    python manifests/make_labels.py DATA/test_seen.tsv --transcripts DATA/test_seen.wrd --phonemes
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402

_bootstrap.bare_package()  # import birq_fairseq.data without importing fairseq

from birq_fairseq.data.labels import make_labels  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="manifest .tsv (first line audio root, then path<TAB>num_samples)")
    p.add_argument("--transcripts", required=True, help="path<TAB>text file or plain text (one line per entry)")
    p.add_argument("--output-dir", default=None, help="where to write labels (default: the manifest's folder)")
    p.add_argument("--output-name", default=None, help="label file stem (default: manifest name without .tsv)")
    p.add_argument("--dict", action="store_true", help="also write dict.ltr.txt from these labels")
    p.add_argument("--check-dict", default=None, help="fail on characters not in this dict.ltr.txt")
    p.add_argument("--strict-order", action="store_true", help="path<TAB>text lines must follow manifest order")
    p.add_argument("--phonemes", action="store_true",
                   help="also write <split>.phn (espeak-ng IPA phonemes, en-us; with --dict also dict.phn.txt)")
    p.add_argument("--phoneme-dict", action="store_true",
                   help="with --phonemes: write dict.phn.txt from these labels (dict.ltr.txt untouched)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.phoneme_dict and not args.phonemes:
        print("make_labels: error: --phoneme-dict needs --phonemes", file=sys.stderr)
        return 1
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.manifest))
    try:
        res = make_labels(args.manifest, args.transcripts, out_dir, split=args.output_name,
                          write_dict=args.dict, check_dict=args.check_dict, strict_order=args.strict_order,
                          phonemes=args.phonemes, write_phoneme_dict=args.phoneme_dict)
    except ValueError as e:
        print(f"make_labels: error: {e}", file=sys.stderr)
        return 1
    wrote = [res[k] for k in ("wrd", "ltr", "dict", "phn", "phn_dict") if k in res]
    print(f"make_labels: {res['utterances']} utterances; wrote {', '.join(wrote)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
