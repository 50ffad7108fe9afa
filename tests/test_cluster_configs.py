"""SLURM launch configs (examples/pretrain/run_config/slurm_*.yaml), issue #10 item 4.

Each run_config is composed with hydra's compose API on top of a pretraining config, the way
``fairseq-hydra-train -m --config-dir examples/pretrain --config-name ... hydra/launcher=submitit_slurm
+run_config=slurm_N`` composes it, and checked for the fields that break fairseq on clusters:
world size = nodes x GPUs per node (fairseq asserts SLURM's tasks per node == world size / nodes),
one task per GPU, a fixed rendezvous port (> 0: fairseq's SLURM init is tcp://<first node>:port),
a partition the user must give (no site's partition names baked in). Then the launcher's parameters go through submitit's own SLURM
executor, as the plugin passes them, to the #SBATCH lines SLURM would receive (nothing is submitted).
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "examples" / "pretrain"
RUN_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "run_config").glob("slurm_*.yaml"))
BASE_BATCH_GPUS = 32  # base configs: 8 GPUs x update_freq 4 (HuBERT base's 32 GPUs)


def compose(config_name, overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from fairseq.dataclass.initialize import hydra_init

    hydra_init(config_name)  # fairseq's schema under the config's name, as fairseq-hydra-train's cli_main
    # fairseq_cli/hydra_train.py's hydra.main has no version_base: hydra 1.1 semantics.
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def test_run_configs_exist():
    assert RUN_CONFIGS == ["slurm_1", "slurm_2", "slurm_4"]


@pytest.mark.parametrize("run_config", RUN_CONFIGS)
@pytest.mark.parametrize("config_name", ["base_birq_librispeech", "base_bestrq_librispeech"])
def test_run_config_distributed_fields(run_config, config_name, tmp_path, monkeypatch):
    nodes = int(run_config.split("_")[1])
    update_freq = max(BASE_BATCH_GPUS // (8 * nodes), 1)
    cfg = compose(config_name, [
        "hydra/launcher=submitit_slurm", f"+run_config={run_config}", "hydra.launcher.partition=gpu",
        "task.data=/data/manifests", f"common.user_dir={REPO / 'birq_fairseq'}",
        f"optimization.update_freq=[{update_freq}]",
    ])
    launcher, dist = cfg.hydra.launcher, cfg.distributed_training
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == nodes
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8  # one task per GPU
    assert dist.distributed_world_size == launcher.nodes * launcher.gpus_per_node
    assert dist.distributed_world_size // launcher.nodes == launcher.tasks_per_node  # fairseq's SLURM assert
    assert 1024 <= dist.distributed_port < 65536
    assert dist.distributed_world_size * cfg.optimization.update_freq[0] == BASE_BATCH_GPUS
    assert cfg.model._name == "birq" and cfg.task.data == "/data/manifests"
    sweep_dir = str(cfg.hydra.sweep.dir)
    assert sweep_dir.startswith(f"multirun/{config_name}_{nodes}x8/") and "task.data" not in sweep_dir

    # What SLURM receives: the plugin's parameter translation, then submitit's sbatch file.
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import _make_sbatch_string

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    params = OmegaConf.to_container(launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = _make_sbatch_string(command="fairseq-hydra-train", folder=str(tmp_path),
                                 **executor._executor.parameters)
    for line in (f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=10"):
        assert line in sbatch, (line, sbatch)


def test_partition_must_be_given(monkeypatch):
    """No partition guessed: an unset BIRQ_SLURM_PARTITION fails at launch, naming the variable."""
    from omegaconf.errors import InterpolationResolutionError

    cfg = compose("base_birq_librispeech", ["hydra/launcher=submitit_slurm", "+run_config=slurm_2"])
    monkeypatch.delenv("BIRQ_SLURM_PARTITION", raising=False)
    with pytest.raises(InterpolationResolutionError, match="BIRQ_SLURM_PARTITION"):
        cfg.hydra.launcher.partition
    monkeypatch.setenv("BIRQ_SLURM_PARTITION", "a100")
    assert cfg.hydra.launcher.partition == "a100"
