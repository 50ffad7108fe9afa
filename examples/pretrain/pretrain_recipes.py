"""The pretraining recipes in this folder (``*.yaml``) read into the plugin's dataclasses.

``fairseq-hydra-train --config-name NAME`` fills ``cfg.model`` by merging the file's ``model:``
section over the registered dataclass (``BirqConfig``): the dataclass's defaults, then the
file's values; ``_name`` selects the registered class and is not a field. Interpolations into
other groups (``BirqConfig.fp16 = II("common.fp16")``) take the file's ``common:`` value over
fairseq's ``CommonConfig`` default. ``load_section`` does the same merge without hydra, so the
tests and the benchmarks (examples/benchmarks/bench_lib.py) read one recipe the way a
training run reads it, instead of re-declaring its values in Python.
"""

import os

from omegaconf import OmegaConf

PRETRAIN_DIR = os.path.dirname(os.path.abspath(__file__))


def recipe_path(name: str) -> str:
    return os.path.join(PRETRAIN_DIR, f"{name}.yaml")


def load_recipe(name: str):
    """The whole YAML file as an OmegaConf DictConfig (nothing merged)."""
    return OmegaConf.load(recipe_path(name))


def _section_node(name: str, section: str, dataclass, changes: dict):
    from fairseq.dataclass.configs import CommonConfig

    recipe = load_recipe(name)
    raw = {k: v for k, v in OmegaConf.to_container(recipe[section]).items() if k != "_name"}
    root = OmegaConf.create({"common": OmegaConf.merge(OmegaConf.structured(CommonConfig),
                                                       recipe.get("common") or {})})
    root[section] = OmegaConf.merge(OmegaConf.structured(dataclass), raw, changes)
    return root[section]


def load_section(name: str, section: str, dataclass, **changes):
    """``NAME.yaml``'s ``section`` merged into ``dataclass`` as fairseq populates it (an instance),
    then ``changes`` (field -> value) on top; an unknown field in the file or in ``changes`` raises."""
    return OmegaConf.to_object(_section_node(name, section, dataclass, changes))


def section_dict(name: str, section: str, dataclass, **changes) -> dict:
    """``load_section`` as a plain dict of every field (choices as strings, tuples as lists): the
    keyword arguments that rebuild the same dataclass, and JSON-serialisable."""
    node = _section_node(name, section, dataclass, changes)
    out = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    out.pop("_name", None)  # FairseqDataclass's registry name, not a setting
    return out
