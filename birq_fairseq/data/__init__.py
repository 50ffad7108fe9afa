"""Data utilities: manifest checks for the tasks (audio.py, imports fairseq), and label,
manifest and demo-corpus tooling (labels.py, corpus.py: no fairseq imports, so the
scripts in manifests/ run without loading fairseq)."""
