"""Fast tests of the demo's own logic (examples/demo/demo_lib.py): fairseq json-log
parsing, decode-output parsing, WER table assembly, plots, and stage skipping on rerun.

REAL_LOG below is verbatim (minus the model repr and most of the config dump) from
``common.log_file`` of a real 5-update run:

    fairseq-hydra-train --config-dir examples/pretrain --config-name tiny_birq \
      common.user_dir=$PWD/birq_fairseq task.data=DATA optimization.max_update=5 \
      common.log_format=json common.log_interval=1 common.log_file=train.log \
      dataset.max_tokens=64000 dataset.validate_interval_updates=3

on synthetic audio from tests/audio_fixtures.py (train: 6 utterances seed 0, valid: 2
seed 1). fairseq re-adds its log-file handler each epoch, so epoch 2's records appear
twice. ``test_real_run_log_parses`` regenerates such a log (conftest's ``short_pretrain_run``).
"""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "demo"))
sys.path.insert(0, str(REPO / "tests"))

import pipeline as P  # noqa: E402
import report as R  # noqa: E402
import stages as S  # noqa: E402

REAL_LOG = """{'_name': None, 'common': {'_name': None, 'no_progress_bar': False, 'log_interval': 1, 'log_format': 'json'}}
task: BirqPretrainingTask
model: BirqModel
criterion: BirqCriterion
num. shared model params: 419,456 (num. trained: 419,456)
num. expert model params: 0 (num. trained: 0)
training on 1 devices (GPUs/TPUs)
max tokens per device = 64000 and max sentences per device = None
begin dry-run validation on "valid" subset
Start iterating over samples
{"epoch": 1, "update": 0.333, "loss": "8.398", "anchor_loss": "8.117", "anchor_acc": "0", "anchor_code_ppl": "16.4", "enhanced_loss": "8.398", "enhanced_acc": "0", "enhanced_code_ppl": "13.8", "penalty_gap": "0", "gamma": "1", "gumbel_temp": "2", "audio_sec_per_sec": "0", "ups": "0", "bsz": "2", "num_updates": "1", "lr": "3.33333e-05", "gnorm": "9.4", "clip": "0", "train_wall": "10", "wall": "30"}
{"epoch": 1, "update": 0.667, "loss": "8.623", "anchor_loss": "8.529", "anchor_acc": "0", "anchor_code_ppl": "21", "enhanced_loss": "8.212", "enhanced_acc": "0", "enhanced_code_ppl": "21.7", "penalty_gap": "0.4115", "gamma": "1", "gumbel_temp": "1.99", "audio_sec_per_sec": "0.3", "ups": "0.08", "bsz": "2", "num_updates": "2", "lr": "6.66667e-05", "gnorm": "7.886", "clip": "0", "train_wall": "12", "wall": "42"}
{"epoch": 1, "update": 1.0, "loss": "8.652", "anchor_loss": "8.692", "anchor_acc": "0", "anchor_code_ppl": "20.6", "enhanced_loss": "8.077", "enhanced_acc": "0", "enhanced_code_ppl": "23.3", "penalty_gap": "0.5749", "gamma": "1", "gumbel_temp": "1.9801", "audio_sec_per_sec": "0.3", "ups": "0.08", "bsz": "2", "num_updates": "3", "lr": "0.0001", "gnorm": "6.696", "clip": "0", "train_wall": "13", "wall": "55"}
begin validation on "valid" subset
{"epoch": 1, "valid_loss": "8.476", "valid_anchor_loss": "8.418", "valid_anchor_acc": "0", "valid_anchor_code_ppl": "17.7", "valid_enhanced_loss": "8.175", "valid_enhanced_acc": "0", "valid_enhanced_code_ppl": "20.4", "valid_penalty_gap": "0.3005", "valid_gamma": "1", "valid_gumbel_temp": "1.9801", "valid_audio_sec_per_sec": "0", "valid_bsz": "2", "valid_num_updates": "3"}
end of epoch 1 (average epoch stats below)
{"epoch": 1, "train_loss": "8.579", "train_anchor_loss": "8.493", "train_anchor_acc": "0", "train_anchor_code_ppl": "19.3", "train_enhanced_loss": "8.204", "train_enhanced_acc": "0", "train_enhanced_code_ppl": "19.6", "train_penalty_gap": "0.3753", "train_gamma": "1", "train_gumbel_temp": "1.9801", "train_audio_sec_per_sec": "0.2", "train_ups": "0.06", "train_bsz": "2", "train_num_updates": "3", "train_lr": "0.0001", "train_gnorm": "7.994", "train_clip": "0", "train_train_wall": "35", "train_wall": "61"}
Start iterating over samples
{"epoch": 2, "update": 1.333, "loss": "8.072", "anchor_loss": "8.084", "anchor_acc": "0", "anchor_code_ppl": "28.6", "enhanced_loss": "8.106", "enhanced_acc": "0", "enhanced_code_ppl": "26.1", "penalty_gap": "-0.0336", "gamma": "1", "gumbel_temp": "1.9701", "audio_sec_per_sec": "0.2", "ups": "0.06", "bsz": "2", "num_updates": "4", "lr": "0.000133333", "gnorm": "6.119", "clip": "0", "train_wall": "11", "wall": "73"}
{"epoch": 2, "update": 1.333, "loss": "8.072", "anchor_loss": "8.084", "anchor_acc": "0", "anchor_code_ppl": "28.6", "enhanced_loss": "8.106", "enhanced_acc": "0", "enhanced_code_ppl": "26.1", "penalty_gap": "-0.0336", "gamma": "1", "gumbel_temp": "1.9701", "audio_sec_per_sec": "0.2", "ups": "0.06", "bsz": "2", "num_updates": "4", "lr": "0.000133333", "gnorm": "6.119", "clip": "0", "train_wall": "11", "wall": "73"}
{"epoch": 2, "update": 1.667, "loss": "7.732", "anchor_loss": "8.028", "anchor_acc": "0", "anchor_code_ppl": "25.6", "enhanced_loss": "7.821", "enhanced_acc": "0.0303", "enhanced_code_ppl": "33", "penalty_gap": "-0.0894", "gamma": "1", "gumbel_temp": "1.9603", "audio_sec_per_sec": "0.4", "ups": "0.11", "bsz": "2", "num_updates": "5", "lr": "0.000166667", "gnorm": "5.968", "clip": "0", "train_wall": "9", "wall": "82"}
{"epoch": 2, "update": 1.667, "loss": "7.732", "anchor_loss": "8.028", "anchor_acc": "0", "anchor_code_ppl": "25.6", "enhanced_loss": "7.821", "enhanced_acc": "0.0303", "enhanced_code_ppl": "33", "penalty_gap": "-0.0894", "gamma": "1", "gumbel_temp": "1.9603", "audio_sec_per_sec": "0.4", "ups": "0.11", "bsz": "2", "num_updates": "5", "lr": "0.000166667", "gnorm": "5.968", "clip": "0", "train_wall": "9", "wall": "82"}
Stopping training due to num_updates: 5 >= max_update: 5
begin validation on "valid" subset
{"epoch": 2, "valid_loss": "8.399", "valid_anchor_loss": "8.564", "valid_anchor_acc": "0", "valid_anchor_code_ppl": "19.4", "valid_enhanced_loss": "7.951", "valid_enhanced_acc": "0", "valid_enhanced_code_ppl": "16.1", "valid_penalty_gap": "0.4472", "valid_gamma": "1", "valid_gumbel_temp": "1.9603", "valid_audio_sec_per_sec": "0", "valid_bsz": "2", "valid_num_updates": "5", "valid_best_loss": "8.399"}
{"epoch": 2, "valid_loss": "8.399", "valid_anchor_loss": "8.564", "valid_anchor_acc": "0", "valid_anchor_code_ppl": "19.4", "valid_enhanced_loss": "7.951", "valid_enhanced_acc": "0", "valid_enhanced_code_ppl": "16.1", "valid_penalty_gap": "0.4472", "valid_gamma": "1", "valid_gumbel_temp": "1.9603", "valid_audio_sec_per_sec": "0", "valid_bsz": "2", "valid_num_updates": "5", "valid_best_loss": "8.399"}
end of epoch 2 (average epoch stats below)
{"epoch": 2, "train_loss": "7.894", "train_anchor_loss": "8.054", "train_anchor_acc": "0", "train_anchor_code_ppl": "27.1", "train_enhanced_loss": "7.957", "train_enhanced_acc": "0.0159", "train_enhanced_code_ppl": "29.6", "train_penalty_gap": "-0.0629", "train_gamma": "1", "train_gumbel_temp": "1.9603", "train_audio_sec_per_sec": "0.3", "train_ups": "0.08", "train_bsz": "2", "train_num_updates": "5", "train_lr": "0.000166667", "train_gnorm": "6.043", "train_clip": "0", "train_train_wall": "21", "train_wall": "87"}
{"epoch": 2, "train_loss": "7.894", "train_anchor_loss": "8.054", "train_anchor_acc": "0", "train_anchor_code_ppl": "27.1", "train_enhanced_loss": "7.957", "train_enhanced_acc": "0.0159", "train_enhanced_code_ppl": "29.6", "train_penalty_gap": "-0.0629", "train_gamma": "1", "train_gumbel_temp": "1.9603", "train_audio_sec_per_sec": "0.3", "train_ups": "0.08", "train_bsz": "2", "train_num_updates": "5", "train_lr": "0.000166667", "train_gnorm": "6.043", "train_clip": "0", "train_train_wall": "21", "train_wall": "87"}
done training in 66.3 seconds
"""


@pytest.fixture
def real_log(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(REAL_LOG)
    return path


def test_parse_real_log_dedupes_and_strips_prefixes(real_log):
    parsed = S.parse_fairseq_log(real_log)
    assert [r["num_updates"] for r in parsed["train"]] == [1, 2, 3, 4, 5]
    assert [r["num_updates"] for r in parsed["valid"]] == [3, 5]
    assert [r["num_updates"] for r in parsed["epoch"]] == [3, 5]
    # per-interval records keep their own "train_wall" key and are not epoch summaries
    assert all("update" in r for r in parsed["train"])
    for kind in ("valid", "epoch"):
        for r in parsed[kind]:
            assert "anchor_acc" in r and "enhanced_code_ppl" in r
            assert not any(k.startswith(("valid_", "train_")) for k in r if k != "train_wall")
    first = parsed["train"][0]
    assert first["anchor_code_ppl"] == pytest.approx(16.4)
    assert first["enhanced_code_ppl"] == pytest.approx(13.8)
    assert isinstance(first["gumbel_temp"], (int, float))
    xs, ys = S.curve(parsed["train"], "enhanced_code_ppl")
    assert xs == [1, 2, 3, 4, 5] and len(ys) == 5 and all(y > 1 for y in ys)
    assert parsed["valid"][-1]["gamma"] == 1


def test_parse_resumed_log_keeps_one_record_per_update(real_log, tmp_path):
    resumed = tmp_path / "resumed.log"
    resumed.write_text(REAL_LOG + "garbage line {not json}\n" + REAL_LOG)
    parsed = S.parse_fairseq_log(resumed)
    assert [r["num_updates"] for r in parsed["train"]] == [1, 2, 3, 4, 5]


def test_progress_line_formats_training_and_validation():
    prog = S.FairseqProgress("pt", 5, S.Clock())
    lines = [prog(l) for l in REAL_LOG.splitlines()]
    shown = [l for l in lines if l]
    assert any("update 5/5" in l and "enhanced_code_ppl=" in l for l in shown)
    assert any("validation:" in l for l in shown)
    assert prog("Start iterating over samples") is None


GENERATE = """T-1\tTHE CAT SAT
H-1\t-3.2\tTHE CAT SAT
D-1\t-3.2\tTHE CAT SAT
T-0\tHELLO WORLD
H-0\t-5.1\tHELO
D-0\t-5.1\tHELO
Generate test_seen with beam=5: WER: 40.00
"""


def test_parse_generate_output(tmp_path):
    path = tmp_path / "generate-test_seen.txt"
    path.write_text(GENERATE)
    r = S.parse_generate_output(path)
    assert r["wer"] == 40.0
    assert r["wer_check"] == pytest.approx(40.0)  # 2 errors / 5 words
    # chars: "HELLO WORLD" (11) vs "HELO": 7 edits; "THE CAT SAT" exact -> 7 / 22
    assert r["cer"] == pytest.approx(100 * 7 / 22)
    assert r["utterances"] == 2 and r["words"] == 5
    path.write_text(GENERATE.rsplit("\n", 2)[0])
    with pytest.raises(ValueError):
        S.parse_generate_output(path)


def test_wer_table_rows_columns_and_seed_statistics():
    single = {"birq": {"test_seen": {"wer": 30.0}, "test_unseen": {"wer": 45.5}},
              "none": {"test_seen": {"wer": 90.0}, "test_unseen": {"wer": 95.0}},
              "bestrq": {"test_seen": {"wer": 35.25}, "test_unseen": {"wer": 50.0}}}
    table = R.wer_table(single).splitlines()
    assert [l.split("|")[1].strip() for l in table[2:]] == ["no pretraining", "BEST-RQ", "BiRQ"]
    assert table[4] == "| BiRQ | 30.0 | 45.5 |"
    assert "seen" in table[0] and "unseen" in table[0]
    multi = {"birq": {"test_seen": [{"wer": 10.0}, {"wer": 20.0}], "test_unseen": [{"wer": 30.0}]}}
    row = R.wer_table(multi).splitlines()[2]
    assert "15.0 ± 7.1 (n=2)" in row and "30.0 ± 0.0 (n=1)" in row
    assert R.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_plots_are_written(real_log, tmp_path):
    parsed = S.parse_fairseq_log(real_log)
    R.plot_pretraining({"BiRQ": parsed, "BEST-RQ": parsed}, tmp_path / "curves.png")
    R.plot_wer_bars({"none": {"test_seen": {"wer": 90.0}, "test_unseen": {"wer": 95.0}},
                     "birq": {"test_seen": [{"wer": 10.0}, {"wer": 20.0}], "test_unseen": [{"wer": 30.0}]}},
                    tmp_path / "wer.png")
    for name in ("curves.png", "wer.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_run_stage_skips_finished_and_reruns_changed_or_missing(tmp_path):
    stages = S.Stages(tmp_path / "stages")
    out = tmp_path / "ckpt.pt"
    calls = []

    def action():
        calls.append(1)
        out.write_text("x")
        return {"result": {"wer": 1.0}}

    clock = S.Clock()
    m1 = S.run_stage(stages, "s", "sig1", [out], action, clock, "stage")
    m2 = S.run_stage(stages, "s", "sig1", [out], action, clock, "stage")
    assert len(calls) == 1 and m2["result"] == m1["result"] == {"wer": 1.0}
    S.run_stage(stages, "s", "sig2", [out], action, clock, "stage")  # settings changed
    assert len(calls) == 2
    out.unlink()  # output deleted
    S.run_stage(stages, "s", "sig2", [out], action, clock, "stage")
    assert len(calls) == 3

    def failing():
        raise S.StageFailed("boom")

    with pytest.raises(S.StageFailed):
        S.run_stage(stages, "f", "sig", [tmp_path / "never"], failing, clock, "failing")
    assert stages.load("f")["status"] == "started" and not stages.done("f", "sig")
    assert "f" not in stages.timings()

    def no_output():
        return None

    with pytest.raises(RuntimeError):
        S.run_stage(stages, "g", "sig", [tmp_path / "missing"], no_output, clock, "no output")
    assert not stages.done("g", "sig")

    # clean() runs only when a previous attempt used other settings
    cleaned = []
    S.run_stage(stages, "f", "sig", [out], action, clock, "retry", clean=lambda: cleaned.append(1))
    assert cleaned == [] and stages.done("f", "sig")
    S.run_stage(stages, "f", "other", [out], action, clock, "changed", clean=lambda: cleaned.append(1))
    assert cleaned == [1]


def _fake_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    counts = P.corpus_counts("tiny")
    (root / "corpus.json").write_text(json.dumps({"seed": 1, "size": "tiny", "counts": counts,
                                                  "total_hours": 0.01}))
    for name in ["train.tsv", "finetune.tsv", "finetune.ltr", "valid.tsv", "valid.ltr", "dict.ltr.txt",
                 "test_seen.tsv", "test_seen.ltr", "test_unseen.tsv", "test_unseen.ltr"]:
        (root / name).write_text("")
    return root


def test_pipeline_rerun_skips_every_finished_stage(tmp_path, monkeypatch):
    corpus = _fake_corpus(tmp_path / "corpus")
    assert P.corpus_complete(corpus, "tiny", 1) and not P.corpus_complete(corpus, "quick", 1)
    commands = []

    resumed = []

    def fake_run(cmd, log_path, env=None, line_filter=None, cwd=None):
        cmd = [str(c) for c in cmd]
        commands.append(cmd)
        if "fairseq-hydra-train" in cmd[0]:
            save = next(a.split("=", 1)[1] for a in cmd if a.startswith("checkpoint.save_dir="))
            # every training run writes TensorBoard events beside its checkpoints
            assert f"common.tensorboard_logdir={save}/tensorboard" in cmd
            resumed.append((Path(save).name, (Path(save) / "checkpoint_last.pt").exists()))
            Path(save).mkdir(parents=True, exist_ok=True)
            (Path(save) / "checkpoint_last.pt").write_text("ckpt")
        elif "fairseq-generate" in cmd[0]:
            res = Path(cmd[cmd.index("--results-path") + 1])
            subset = cmd[cmd.index("--gen-subset") + 1]
            res.mkdir(parents=True, exist_ok=True)
            wer = {"none": 90.0, "bestrq": 60.0, "birq": 50.0}[res.name]
            (res / f"generate-{subset}.txt").write_text(
                f"T-0\tA B\nH-0\t-1\tA B\nGenerate {subset} with beam=5: WER: {wer:.2f}\n")
        elif cmd[1].endswith("make_labels.py"):  # phoneme labels, written to a scratch directory
            out_dir = Path(cmd[cmd.index("--output-dir") + 1])
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / (Path(cmd[2]).stem + ".phn")).write_text("a b\n")
            if "--phoneme-dict" in cmd:
                (out_dir / "dict.phn.txt").write_text("a 1\nb 1\n")
        elif cmd[1:4] == ["-m", "birq_fairseq", "superb"]:  # the frozen evaluation
            per = {"none": 70.0, "bestrq": 60.0, "birq": 55.0}[Path(cmd[cmd.index("--json") + 1]).stem]
            run = lambda task, v: {"task": task, "downstream": "linear", "valid": {"per": v, "cer": v},  # noqa: E731
                                   "test": {t: {"per": v, "cer": v + 1} for t in P.TEST_SETS}, "layer_weights": [1.0]}
            out_json = Path(cmd[cmd.index("--json") + 1])
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps({"runs": [run("pr", per), run("asr", per)]}))
        else:
            raise AssertionError(cmd)

    monkeypatch.setattr(S, "run_command", fake_run)  # the train and decode stages
    monkeypatch.setattr(P, "run_command", fake_run)  # the corpus and probe stages
    preset = P.PRESETS["tiny"]
    pipe = P.Pipeline(tmp_path / "run", preset, corpus, "tiny", seed=3)
    summary = pipe.run()
    # 3 pretrain/init, 3 finetune, 6 decodes, phoneme labels of 4 splits (once), 3 frozen evaluations
    assert len(commands) == 3 + 3 + 6 + 4 + 3
    assert all((corpus / f"{split}.phn").exists() for split in P.PHONEME_SPLITS)
    assert (corpus / "dict.phn.txt").exists() and not (corpus / "finetune.ltr").read_text() == "a b\n"
    assert summary["frozen"]["birq"]["pr_linear"]["test_unseen"] == 55.0
    assert "| random init | 70.0 | 70.0 | 71.0 | 71.0 |" in R.frozen_table(summary["frozen"])
    pre = [c for c in commands if "examples/pretrain" in " ".join(c)]
    by_system = {c[c.index("--config-name") + 1] + ":" + next(a for a in c if a.startswith("model.enhanced_stream=")): c
                 for c in pre}
    assert len(by_system) == 2 and len(pre) == 3
    # BiRQ and BEST-RQ: identical settings except the enhanced stream; init: lr 0, 1 update
    birq, bestrq, init = pre
    diff = set(birq) ^ set(bestrq)
    assert {a for a in diff if not a.startswith(("checkpoint.save_dir=", "hydra.run.dir=", "common.log_file=",
                                                 "common.tensorboard_logdir="))} == {
        "model.enhanced_stream=true", "model.enhanced_stream=false"}
    assert "optimization.lr=[0.0]" in init and "optimization.max_update=1" in init and "common.seed=3" in init
    fts = [c for c in commands if "examples/finetune" in " ".join(c)]
    assert all("dataset.train_subset=finetune" in c for c in fts)
    assert summary["results"]["birq"]["test_unseen"]["wer"] == 50.0
    assert list(summary["results"]) == ["none", "bestrq", "birq"]

    commands.clear()
    again = P.Pipeline(tmp_path / "run", preset, corpus, "tiny", seed=3).run()
    assert commands == [] and again["results"] == summary["results"]

    # finetuning settings change -> finetune + decode rerun from scratch (old finetuned
    # checkpoints moved aside, not resumed, not lost), pretraining is kept
    changed = dict(preset, finetune_updates=preset["finetune_updates"] + 1)
    resumed.clear()
    P.Pipeline(tmp_path / "run", changed, corpus, "tiny", seed=3).run()
    assert len(commands) == 3 + 6 and not any("examples/pretrain" in " ".join(c) for c in commands)
    assert sorted(resumed) == [("bestrq", False), ("birq", False), ("none", False)]
    kept = list((tmp_path / "run" / "finetune" / "birq" / "superseded").glob("*/checkpoint_last.pt"))
    assert len(kept) == 1 and kept[0].read_text() == "ckpt"

    # an interrupted stage (started marker, same settings) is rerun and resumes its checkpoint
    stages = S.Stages(tmp_path / "run" / "stages")
    marker = stages.load("finetune_birq")
    stages.mark("finetune_birq", marker["signature"], [], status="started")
    commands.clear()
    resumed.clear()
    P.Pipeline(tmp_path / "run", changed, corpus, "tiny", seed=3).run()
    assert resumed == [("birq", True)]
    assert len(commands) == 1 + 2  # that finetuning, then its two decodes (signature chain)


@pytest.mark.e2e
def test_real_run_log_parses(short_pretrain_run):
    """REAL_LOG's shape, regenerated: conftest's short_pretrain_run is that command (5 updates over
    2 epochs, validation at update 3) on the session's synthetic corpus."""
    log = short_pretrain_run["dir"] / "train.log"
    text = log.read_text()
    # fairseq re-adds its log-file handler each epoch: epoch 2's lines are there twice, as in REAL_LOG.
    assert text.count('"num_updates": "5"') == 2 and text.count('"num_updates": "1"') == 1
    parsed = S.parse_fairseq_log(log)
    assert [r["num_updates"] for r in parsed["train"]] == [1, 2, 3, 4, 5]
    assert [r["num_updates"] for r in parsed["valid"]] == [3, 4, 5]
    assert [(r["epoch"], r["num_updates"]) for r in parsed["epoch"]] == [(1, 4), (2, 5)]
    for key in ("anchor_loss", "anchor_acc", "anchor_code_ppl", "enhanced_loss", "enhanced_acc",
                "enhanced_code_ppl", "penalty_gap", "gamma", "gumbel_temp"):
        assert all(isinstance(r[key], (int, float)) for r in parsed["train"] + parsed["valid"] + parsed["epoch"]), key
    # what the demo's curves read
    xs, ys = S.curve(parsed["train"], "enhanced_code_ppl")
    assert xs == [1, 2, 3, 4, 5] and all(y >= 1 for y in ys)


def test_report_aggregates_committed_seed_summaries(tmp_path, monkeypatch, real_log):
    """make results: each seed leaves a committed summary; the report reads only those."""
    import run_results

    monkeypatch.setattr(R, "summary_dir", lambda preset: tmp_path / "runs" / preset)
    logs = R.compact_logs({"BiRQ": S.parse_fairseq_log(real_log)})
    assert set(logs["BiRQ"]["train"][0]) <= set(R.CURVE_KEYS) and "lr" not in logs["BiRQ"]["train"][0]
    corpus = {"size": "tiny", "seed": 1, "splits": {}, "seen_voices": ["a"], "unseen_voices": ["b"]}
    for seed, cer in ((1, 40.0), (2, 50.0)):
        results = {system: {test: {"wer": 80.0, "cer": cer + i, "wer_check": 80.0} for test in P.TEST_SETS}
                   for i, system in enumerate(P.SYSTEMS)}
        R.save_summary("tiny", f"seed{seed}", {"seed": seed, "results": results, "timings": {}, "corpus": corpus,
                                                "diagnostics": {}, "logs": logs, "commands": ["fairseq-hydra-train x"]})
    seeds, ablations = R.load_summaries("tiny")
    assert list(seeds) == [1, 2] and not ablations
    md = tmp_path / "RESULTS.md"
    code = run_results.main(["--preset", "tiny", "--report-only", "--results-md", str(md), "--plots-dir",
                   str(tmp_path / "plots"), "--out", str(tmp_path / "out"), "--corpus-dir", str(tmp_path / "c")])
    assert code == 0
    text = md.read_text()
    assert "| BEST-RQ | 46.0 ± 7.1 (n=2) | 46.0 ± 7.1 (n=2) |" in text  # CER 41 and 51
    assert (tmp_path / "plots" / "cer.png").exists() and (tmp_path / "plots" / "pretraining_curves.png").exists()


def test_labelled_subset_is_a_nested_prefix(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "finetune.tsv").write_text("/root\n" + "".join(f"u{i}.wav\t16000\n" for i in range(5)))
    (corpus / "finetune.ltr").write_text("".join(f"A{i} |\n" for i in range(5)))
    (corpus / "finetune.wrd").write_text("".join(f"A{i}\n" for i in range(5)))
    assert P.labelled_subset(corpus, 3) == "finetune3"
    assert (corpus / "finetune3.tsv").read_text().splitlines() == ["/root", "u0.wav\t16000", "u1.wav\t16000",
                                                                   "u2.wav\t16000"]
    assert (corpus / "finetune3.ltr").read_text().splitlines() == ["A0 |", "A1 |", "A2 |"]
    with pytest.raises(ValueError, match="finetune.tsv: has 5 utterances"):
        P.labelled_subset(corpus, 6)


def test_demo_says_how_it_relates_to_results_md(tmp_path, monkeypatch):
    import run_demo

    monkeypatch.setattr(R, "summary_dir", lambda preset: tmp_path / preset)
    results = {"none": {t: {"cer": 60.0} for t in P.TEST_SETS}, "bestrq": {t: {"cer": 45.0} for t in P.TEST_SETS}}
    line = run_demo.relation_to_results_md(results)
    assert "= 0.75" in line and "n/a over 0 committed seed(s)" in line
    R.save_summary("regime", "seed1", {"results": {"none": {t: {"cer": 50.0} for t in P.TEST_SETS},
                                                   "bestrq": {t: {"cer": 40.0} for t in P.TEST_SETS}}})
    assert "ratio is 0.80 over 1 committed seed(s)" in run_demo.relation_to_results_md(results)


def test_demo_results_json_keeps_the_frozen_table(tmp_path, monkeypatch):
    """The frozen evaluation the demo prints is also in OUT/results.json (it was added after the write)."""
    import run_demo

    monkeypatch.setattr(R, "summary_dir", lambda preset: tmp_path / preset)

    class FakePipe:
        seed, corpus_dir = 1, tmp_path

        def pretrain_logs(self):
            return {}

    results = {s: {t: {"wer": 90.0, "cer": 60.0} for t in P.TEST_SETS} for s in ("none", "bestrq")}
    frozen = {"bestrq": {"pr_linear": {"valid": 55.0, "test_seen": 56.0, "test_unseen": 57.0}}}
    summary = {"results": results, "frozen": frozen, "corpus": {"size": "tiny"},
               "timings": {"pretrain:bestrq": {"wall_seconds": 1.0, "cpu_seconds": 1.0}}}
    run_demo.report(tmp_path, FakePipe(), summary, "quick", {}, S.Clock())
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["frozen"] == frozen
    assert written["results"]["bestrq"]["test_seen"]["cer"] == 60.0


def test_committed_results_md_is_what_the_report_makes_from_the_committed_summaries():
    """RESULTS.md must be regenerable: `make results-report` from the committed JSON only."""
    import run_results

    preset = P.PRESETS["regime"]
    text = run_results.results_md("regime", preset, Path("data") / f"tts_{preset['corpus']}", "examples/demo/results")
    committed = (REPO / "RESULTS.md").read_text()
    assert text == committed, "RESULTS.md differs from `make results-report`: rerun it and commit the result"
    assert "None utterances" not in text


def test_paths_recorded_elsewhere_become_repository_relative():
    cmd = ("fairseq-hydra-train --config-dir examples/pretrain task.data=/work/main/data/tts_large "
           "checkpoint.save_dir=/tmp/ci-clone/results_runs/x common.user_dir=/home/u/birq/birq_fairseq")
    assert S.repo_relative(cmd) == ("fairseq-hydra-train --config-dir examples/pretrain task.data=data/tts_large "
                                    "checkpoint.save_dir=results_runs/x common.user_dir=birq_fairseq")


def test_grid_lists_its_runs_with_the_demo_recipes(capsys):
    import regime_grid

    assert regime_grid.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "pretrain s_bestrq3k:" in out and "run ft_s_bestrq3k_l100_r3:" in out
    # the grid's recipes and shapes are the demo's, defined once
    assert regime_grid.RECIPES["r1"] == P.FT_FAST
    assert regime_grid.RECIPES["r3"] == P.FT_FAST + P.FT_FROZEN_FIRST
    assert regime_grid.ARCHS["s"] == P.MODEL_SMALL


def test_grid_and_pipeline_build_runs_with_one_override_builder(tmp_path):
    """The grid's pretraining of the small BEST-RQ model is the demo's pretraining of it."""
    import regime_grid

    preset = dict(P.PRESETS["large"], pretrain_updates=3000, max_tokens=128000, log_interval=25)
    pipe = P.Pipeline(tmp_path, preset, tmp_path / "c", "large", seed=2)
    spec = regime_grid.PRETRAIN["s_bestrq3k"]
    grid = P.pretrain_overrides(tmp_path / "c", tmp_path / "sd", 2, spec["system"], spec["updates"],
                                spec["max_tokens"], 25, regime_grid.ARCHS[spec["arch"]], train_subset=spec["pool"])
    assert grid == pipe.pretrain_overrides("bestrq", tmp_path / "sd")
    ft = P.finetune_overrides(tmp_path / "c", tmp_path / "w.pt", tmp_path / "ft", 2, "finetune100", 2000, 128000, 50,
                              P.RECIPES["r3"])
    assert ft[-1] == "model.freeze_finetune_updates=600" and "optimization.lr=[0.001]" in ft


def test_label_health_verdict_separates_healthy_from_collapsed():
    import label_health as LH

    n = 50
    updates = list(range(100, 100 * (n + 1), 100))
    probe = [{"num_updates": 1, "anchor_pnmi": 0.2, "anchor_pnmi_chance": 0.1, "enhanced_pnmi": 0.15,
              "enhanced_pnmi_chance": 0.1}] + [
        {"num_updates": u, "anchor_pnmi": 0.2, "anchor_pnmi_chance": 0.1, "enhanced_pnmi": 0.2 + 0.1 * u / 5000,
         "enhanced_pnmi_chance": 0.1} for u in (2500, 5000)]
    healthy = {"num_updates": updates, "anchor_code_ppl": [20.0] * n, "enhanced_code_ppl": [40.0] * n,
               "enhanced_acc": [0.1] * n}
    h = LH.health(healthy, probe)
    assert h["healthy"] and h["ppl_ok"] and h["acc_ok"] and h["pnmi_above_anchor"] and h["pnmi_rising"]
    collapsed = dict(healthy, enhanced_code_ppl=[40.0] * 2 + [2.0] * (n - 2), enhanced_acc=[0.9] * n)
    c = LH.health(collapsed, probe)
    assert not c["ppl_ok"] and not c["healthy"] and c["min_ppl_ratio"] == 0.1
    noise = dict(healthy, enhanced_acc=[0.05] * n)  # chance 1 / 40 = 0.025: 0.05 is not 3x above it
    assert not LH.health(noise, probe)["acc_ok"]
    falling = [probe[0], dict(probe[1], enhanced_pnmi=0.4), dict(probe[2], enhanced_pnmi=0.3)]
    f = LH.health(healthy, falling)
    assert f["pnmi_above_anchor"] and not f["pnmi_rising"] and not f["healthy"]


def test_label_health_lists_variants_and_rejects_unknown_runs(capsys):
    import label_health as LH

    assert LH.main(["--list", "--updates", "1000"]) == 0
    out = capsys.readouterr().out
    assert "argmax_sinkhorn: ++model.enhanced_selection=argmax ++model.enhanced_sinkhorn_iters=3" in out
    assert "++criterion.enhanced_start_updates=100" in out  # the warm-up placeholder is filled in
    with pytest.raises(SystemExit):
        LH.main(["--runs", "nonsense:1"])


def test_label_health_has_no_verdict_without_an_enhanced_stream():
    import label_health as LH

    curves = {"num_updates": [100, 200], "anchor_code_ppl": [20.0, 20.0], "enhanced_code_ppl": [None, None],
              "enhanced_acc": [None, None]}
    h = LH.health(curves, [{"num_updates": 100, "anchor_pnmi": 0.2, "anchor_pnmi_chance": 0.1}])
    assert h["healthy"] is None and "BEST-RQ" in h["note"]


def test_label_health_frozen_table_averages_seeds_and_counts_each_init_once():
    import label_health as LH

    def row(variant, seed, per, init_per):
        res = lambda v: {"pr_linear": {"test_seen": v, "test_unseen": v + 5},  # noqa: E731
                         "asr_linear": {"test_seen": v + 1, "test_unseen": v + 6}}
        return {"variant": variant, "seed": seed, "frozen": {"final": res(per), "init": res(init_per)}}

    rows = [row("argmax_sinkhorn", 1, 50.0, 70.0), row("argmax_sinkhorn", 2, 52.0, 72.0),
            row("stopgrad", 1, 60.0, 70.0), {"variant": "literal", "seed": 1}]
    table = LH.frozen_table(rows)
    assert "| argmax_sinkhorn | 1, 2 | 51.0 ± 1.4 | 56.0 ± 1.4 | 52.0 ± 1.4 | 57.0 ± 1.4 |" in table
    assert "| stopgrad | 1 | 60.0 | 65.0 | 61.0 | 66.0 |" in table
    # seed 1's initialisation is shared by argmax_sinkhorn and stopgrad: counted once
    assert "| random init (the seeds' initialisations) | 1, 2 | 71.0 ± 1.4 |" in table
    assert "literal" not in table


def test_ladder_rungs_parse_and_reject_bad_ones():
    import ladder as L

    assert L.parse_rung("medium:birq:10000:2") == ("medium", "birq", 10000, 2)
    assert L.parse_rung("fbank") == ("fbank",)
    assert L.rung_name("medium", "birq", 10000, 2) == "medium_birq_10k_seed2"
    assert L.rung_name("tiny", "none", 0, 1) == "tiny_none_init_seed1"
    for bad in ("huge:birq:10000:1", "medium:hubert:10000:1", "medium:birq:10k:1", "medium:none:500:1",
                "medium:bestrq:0:1", "medium:birq:10000"):
        with pytest.raises(ValueError, match="rung"):
            L.parse_rung(bad)
    # stopgrad is BiRQ (the default label generator) with the label gradient stopped
    assert L.SYSTEMS["stopgrad"] == ("birq", ["++model.enhanced_label_grad=false"], 1)
    assert L.SIZES["medium"]["model.encoder_embed_dim"] == 192 and L.SIZES["large"]["model.encoder_layers"] == 8


def test_ladder_list_names_every_size_and_system(capsys):
    import ladder as L

    assert L.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:len(L.SIZES) + len(L.SYSTEMS)]] == (
        [f"size {s}" for s in L.SIZES] + [f"system {s}" for s in L.SYSTEMS])
    assert "8 x 8 s per update, the size's lr x sqrt(8)" in next(ln for ln in lines if ln.startswith("system bestrq_b8"))


def test_ladder_system_overrides_reach_only_their_pretraining(tmp_path, monkeypatch):
    """A BEST-RQ variant's overrides (bestrq8192) reach BEST-RQ's pretraining run; BiRQ's variants
    (stopgrad) reach BiRQ's; plain BEST-RQ gets neither, so its committed rungs keep their identity."""
    import ladder as L

    monkeypatch.setattr(L.LH, "corpus_dir", lambda: tmp_path / "corpus")

    def overrides(system):
        pre, _, pipe_system = L.pipelines(tmp_path, "medium", system, 200, 1, threads=1)
        return pre.pretrain_overrides(pipe_system, tmp_path / "save")

    wide, plain, stop = overrides("bestrq8192"), overrides("bestrq"), overrides("stopgrad")
    assert "++model.anchor_codebook_size=8192" in wide and "model.enhanced_stream=false" in wide
    assert [o for o in wide if o != "++model.anchor_codebook_size=8192"] == plain
    assert "++model.enhanced_label_grad=false" in stop and "model.enhanced_stream=true" in stop
    assert not any("8192" in o or "label_grad" in o for o in plain)
    # bestrq_b4 / bestrq_b8 (4x / 8x the audio per update, lr x sqrt): the batch size is the
    # pretraining's alone (one max_tokens value, no repeated key), and finetuning keeps 8 s batches
    def finetuning(system):
        _, fts, pipe_system = L.pipelines(tmp_path, "tiny", system, 200, 1, threads=1)
        return fts[300].finetune_overrides(pipe_system, tmp_path / "w2v.pt", tmp_path / "ft")

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "finetune.tsv").write_text("/root\n" + "".join(f"u{i}.wav\t16000\n" for i in range(300)))
    for ext in ("ltr", "wrd"):
        (corpus / f"finetune.{ext}").write_text("A |\n" * 300)
    for system, tokens, lr in (("bestrq_b4", 512000, "0.002"), ("bestrq_b8", 1024000, "0.00283")):
        big = overrides(system)
        assert [o for o in big if o.startswith("dataset.max_tokens=")] == [f"dataset.max_tokens={tokens}"]
        assert f"optimization.lr=[{lr}]" in big and "model.enhanced_stream=false" in big
        assert finetuning(system) == finetuning("bestrq")
    assert [o for o in plain if o.startswith("dataset.max_tokens=")] == ["dataset.max_tokens=128000"]
    # one lr per command line: tiny_birq.yaml's for the small sizes' pretraining, the large model's own
    # (pretraining and finetuning); a recipe's parts (FT_FAST + FT_FROZEN_FIRST) merge to the last lr
    def lrs(command):
        return [o for o in command if o.startswith("optimization.lr=")]

    assert lrs(plain) == []
    assert lrs(L.pipelines(tmp_path, "large", "bestrq", 200, 1, threads=1)[0].pretrain_overrides(
        "bestrq", tmp_path / "save")) == ["optimization.lr=[0.0005]"]
    for size, system, lr in (("tiny", "bestrq", "0.001"), ("tiny", "none", "0.002"),
                             ("large", "bestrq", "0.0005"), ("large", "none", "0.0005")):
        _, fts, pipe_system = L.pipelines(tmp_path, size, system, 0 if system == "none" else 200, 1, threads=1)
        assert lrs(fts[100].finetune_overrides(pipe_system, tmp_path / "w2v.pt", tmp_path / "ft")) == \
            [f"optimization.lr=[{lr}]"], (size, system)


def test_merge_overrides_keeps_the_last_value_of_each_key():
    assert P.merge_overrides(["a=1", "b=2", "a=3", "+c=4"]) == ["b=2", "a=3", "+c=4"]
    assert P.merge_overrides(P.fill_recipe(P.RECIPES["r3"], 1000)) == [
        "optimization.clip_norm=10.0", "optimization.lr=[0.001]", "model.feature_grad_mult=1.0",
        "model.mask_channel_prob=0.05", "model.freeze_finetune_updates=300"]


def test_ladder_summary_measures_audio_seen_and_reads_the_stages(tmp_path, monkeypatch):
    """audio hours seen = updates x the logged audio per update (audio_sec_per_sec / ups); the
    finetuning pipelines see the pretraining stage's identity, so a re-pretrained rung is finetuned again."""
    import ladder as L

    monkeypatch.setattr(L.LH, "corpus_dir", lambda: tmp_path / "corpus")
    pre, fts, system = L.pipelines(tmp_path, "medium", "bestrq", 200, 1, threads=1)
    assert system == "bestrq" and list(fts) == [100, 300]
    assert fts[100].p["labelled"] == 100 and fts[300].p["labelled"] == 300 and fts[100].out == pre.out / "ft100"
    log = pre.out / "pretrain" / "bestrq" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text('{"epoch": 1, "loss": "5.0", "audio_sec_per_sec": "60.0", "ups": "10.0", "num_updates": "100"}\n'
                   '{"epoch": 1, "loss": "4.0", "audio_sec_per_sec": "80.0", "ups": "10.0", "num_updates": "200", '
                   '"anchor_acc": "0.2"}\n')
    pre.stages.mark("pretrain_bestrq", "sig-1", [log], wall_seconds=12.0, cpu_seconds=11.0)
    assert fts[100].stage_identity("pretrain_bestrq") == pre.stage_identity("pretrain_bestrq") is not None
    frozen = {"runs": [{"task": "pr", "downstream": "linear", "valid": {"per": 60.0},
                        "test": {"test_seen": {"per": 61.0}, "test_unseen": {"per": 66.0}}, "layer_weights": [0.5, 0.5]}]}
    s = L.summarise(pre, "medium", "bestrq", 200, 1, frozen,
                    {"100": {"test_seen": {"cer": 50.123, "wer": 90.0}}})
    assert s["audio_seconds_per_update"] == 7.0 and s["audio_hours_seen"] == round(200 * 7.0 / 3600, 2)
    assert s["final_train"] == {"loss": 4.0, "anchor_acc": 0.2} and s["pretrain_wall_seconds"] == 12.0
    assert s["frozen"]["pr_linear"]["test_unseen"] == 66.0
    assert s["finetune"]["100"]["test_seen"] == {"cer": 50.12, "wer": 90.0}


def test_reference_table_compares_each_encoder_with_its_own_init(tmp_path):
    import ladder as L

    def superb(per):
        return {"runs": [{"task": t, "downstream": "linear", "valid": {m: per}, "layer_weights": [1.0],
                          "test": {"test_seen": {m: per}, "test_unseen": {m: per + 10}}}
                         for t, m in (("pr", "per"), ("asr", "cer"))]}

    refs, ours = tmp_path / "reference", tmp_path / "ladder"
    refs.mkdir(), ours.mkdir()
    for updates, per in ((0, 60.0), (5000, 48.0)):
        (refs / f"sb_{updates}.json").write_text(json.dumps(
            {"system": "speechbrain_bestrq", "updates": updates, "seed": 1, "audio_hours_seen": updates / 500,
             "superb": superb(per)}))
    for system, updates, seed, per in (("none", 0, 1, 62.0), ("none", 0, 2, 64.0), ("bestrq", 10000, 1, 58.9),
                                       ("bestrq", 10000, 2, 57.6), ("birq", 10000, 1, 50.0)):
        (ours / f"{system}{seed}.json").write_text(json.dumps(
            {"size": "medium", "system": system, "updates": updates, "seed": seed, "audio_hours_seen": updates / 500,
             "frozen": L.P.frozen_rows(superb(per))}))
    table = L.reference_report(refs, ours)
    assert "| SpeechBrain Conformer (reference) | bestrq | 5000 | 10.0 | 1 | 48.0 | 58.0 | 48.0 | 58.0 | 0.800 | 0.829 |" \
        in table
    # per-seed ratios to the same seed's init (58.9 / 62 = 0.95, 57.6 / 64 = 0.90), then mean ± std
    assert "| ours, medium | bestrq | 10000 | 20.0 | 1, 2 | 58.2 ± 0.9 | 68.2 ± 0.9 | 58.2 ± 0.9 | 68.2 ± 0.9 | 0.925 ± 0.035 |" \
        in table
    assert "birq" not in table and table.count("random init") == 2
    assert L.reference_report(tmp_path / "none", ours).startswith("_No reference runs")


def test_ladder_report_averages_seeds_and_draws_the_curves(tmp_path):
    import ladder as L

    def rung(system, seed, per, updates=10000, size="medium"):
        res = {"pr_linear": {"valid": per - 1, "test_seen": per, "test_unseen": per + 5},
               "asr_linear": {"test_seen": per + 1, "test_unseen": per + 6}}
        ft = {n: {"test_seen": {"cer": per - 10, "wer": 90.0}, "test_unseen": {"cer": per - 9, "wer": 91.0}}
              for n in ("100", "300")}
        return {"rung": L.rung_name(size, system, updates, seed), "size": size, "system": system,
                "updates": 0 if system == "none" else updates, "seed": seed,
                "audio_hours_seen": 0.0 if system == "none" else 18.0, "frozen": res, "finetune": ft}

    for r in (rung("bestrq", 1, 50.0), rung("bestrq", 2, 52.0), rung("none", 1, 60.0), rung("birq", 1, 49.0),
              {"rung": "fbank", "system": "fbank", "frozen": {"pr_linear": {"valid": 75.0, "test_seen": 76.0,
                                                                             "test_unseen": 80.0}}}):
        (tmp_path / f"{r['rung']}.json").write_text(json.dumps(r))
    table = L.report(tmp_path)
    lines = table.splitlines()
    assert "| medium | bestrq | 10000 | 18.0 | 1, 2 | 50.0 ± 1.4 | 51.0 ± 1.4 | 56.0 ± 1.4 | 52.0 ± 1.4 |" in table
    assert [ln.split("|")[2].strip() for ln in lines[2:]] == ["none", "bestrq", "birq", "fbank"]  # sizes, then systems
    assert "| – | fbank | 0 | 0.0 | – | 75.0 | 76.0 | 80.0 | – |" in table
    assert (tmp_path / "ladder.md").read_text() == table and (tmp_path / "ladder.png").stat().st_size > 0


def test_ladder_targets_pair_seeds_and_give_a_verdict_only_at_three(tmp_path):
    import ladder as L

    def rung(system, seed, per, updates):
        res = {"pr_linear": {"valid": per, "test_seen": per, "test_unseen": per}}
        ft = {n: {t: {"cer": per, "wer": 90.0} for t in ("valid", "test_seen", "test_unseen")} for n in ("100", "300")}
        return {"size": "medium", "system": system, "updates": 0 if system == "none" else updates, "seed": seed,
                "frozen": res, "finetune": ft}

    rows = [rung("none", s, 60.0 + s, 0) for s in (1, 2, 3)]
    rows += [rung("bestrq", s, 0.75 * (60.0 + s), 30000) for s in (1, 2, 3)]   # 0.75 x its own seed's init
    rows += [rung("birq", s, 0.96 * 0.75 * (60.0 + s), 30000) for s in (1, 2)]  # two seeds only
    rows += [rung("bestrq", 4, 10.0, 30000)]                                   # no init of seed 4: not paired
    for i, r in enumerate(rows):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    table = L.targets_report(tmp_path, rungs=(("medium", 30000),))
    assert ("| medium 30 k | BEST-RQ / random init | PER | 1, 2, 3 | 0.750 ± 0.000 | 0.750 ± 0.000 | 0.750 ± 0.000 "
            "| ≤ 0.8 | met |") in table
    assert "| BiRQ / BEST-RQ | PER | 1, 2 | 0.960 ± 0.000 | 0.960 ± 0.000 | 0.960 ± 0.000 | ≤ 0.95 | no verdict (2 seeds) |" \
        in table
    assert "| BEST-RQ / no pretraining | CER ft300 | 1, 2, 3 |" in table and "stop-gradient" not in table
    # a ratio over the target is missed
    (tmp_path / "r3.json").write_text(json.dumps(rung("bestrq", 1, 0.95 * 61.0, 30000)))
    assert "| BEST-RQ / random init | PER | 1, 2, 3 | 0.817 ± 0.115 |" in L.targets_report(tmp_path, rungs=(("medium", 30000),))
    assert "missed" in L.targets_report(tmp_path, rungs=(("medium", 30000),))
    assert L.targets_report(tmp_path, rungs=(("large", 5),)).startswith("_No rung")
