"""Data utilities: manifest checks for the tasks (audio.py, imports fairseq), and label and
manifest tooling (labels.py: no fairseq imports, so the scripts in manifests/ run without
loading fairseq). The TTS demo-corpus builder is tooling: manifests/tts_corpus.py."""
