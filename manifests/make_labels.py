#!/usr/bin/env python
"""Write fairseq letter/word labels (<split>.ltr, <split>.wrd, dict.ltr.txt) for a manifest.

Transcripts (--transcripts) are either `path<TAB>text` lines (path relative to
the manifest root, with or without extension, or absolute; any order unless
--strict-order) or plain text with one transcript per manifest line, in order.
Text is upper-cased and reduced to A-Z, apostrophe and space. Example:

    python manifests/make_labels.py data/manifest/train.tsv \\
        --transcripts transcripts.tsv --output-dir data/manifest --dict
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
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.manifest))
    try:
        res = make_labels(args.manifest, args.transcripts, out_dir, split=args.output_name,
                          write_dict=args.dict, check_dict=args.check_dict, strict_order=args.strict_order)
    except ValueError as e:
        print(f"make_labels: error: {e}", file=sys.stderr)
        return 1
    wrote = [res["wrd"], res["ltr"]] + ([res["dict"]] if "dict" in res else [])
    print(f"make_labels: {res['utterances']} utterances; wrote {', '.join(wrote)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
