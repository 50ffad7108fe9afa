#!/usr/bin/env python
"""Write fairseq wav2vec manifests (train.tsv / valid.tsv) for a folder of audio.

Like fairseq's examples/wav2vec/wav2vec_manifest.py, plus validation of every
file (readable, sample rate, mono, non-empty). Example:

    python manifests/make_manifest.py /data/audio --dest data/manifest \\
        --ext wav flac --valid-percent 0.05 --seed 42
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402

_bootstrap.bare_package()  # import birq_fairseq.data without importing fairseq

from birq_fairseq.data.labels import DEFAULT_EXTENSIONS, DEFAULT_SAMPLE_RATE, make_manifest  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="folder of audio files (searched recursively)")
    p.add_argument("--dest", default=".", help="output folder for train.tsv / valid.tsv")
    p.add_argument("--ext", nargs="+", default=list(DEFAULT_EXTENSIONS), help="audio extensions (default: wav flac)")
    p.add_argument("--valid-percent", type=float, default=0.01,
                   help="fraction (0..1) of files for valid.tsv; 0 writes no valid.tsv (default 0.01)")
    p.add_argument("--seed", type=int, default=42, help="random seed of the train/valid split")
    p.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE,
                   help="required sample rate; 0 accepts any (default 16000)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip unreadable/wrong-rate/multichannel/empty files (counted) instead of failing")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        stats = make_manifest(args.root, args.dest, valid_percent=args.valid_percent, seed=args.seed,
                              extensions=args.ext, required_sample_rate=args.sample_rate or None,
                              skip_invalid=args.skip_invalid)
    except ValueError as e:
        print(f"make_manifest: error: {e}", file=sys.stderr)
        return 1
    for rel, reason, detail in stats["skipped_files"]:
        print(f"make_manifest: skipped {rel}: {detail}", file=sys.stderr)
    for reason, n in sorted(stats["skipped"].items()):
        print(f"make_manifest: skipped {n} file(s): {reason}")
    print(f"make_manifest: wrote {stats['train']} train and {stats['valid']} valid entries to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
