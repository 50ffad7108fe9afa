"""Data utilities: manifests, labels and the demo corpus (no fairseq imports here)."""
