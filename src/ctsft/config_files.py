"""The YAML files of config/hydra, read without Hydra: the one place every default lives.

Hydra composes them for the steps; Snakemake's config check, the method registry and the
library's dataclasses (`TrainConfig`, `CDTOptions`, the task prompts) read the same files through
`group_config`, so no default is typed twice. The method YAMLs are read here too, with what their
`kind` says (`ctsft.facts.METHOD_KINDS`): the training steps and Snakemake's config check ask the
same two questions (does it train? does it read a circuit?) without importing torch.
Imports nothing of ctsft but `provenance`, `errors` and `facts`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ctsft.errors import CtsftError
from ctsft.facts import METHOD_KINDS, KindFacts
from ctsft.provenance import REPO_ROOT

CONFIG_DIR_ENV = "CTSFT_CONFIG_DIR"
#: defaults-list entries naming a schema (`schema`, `schema_heads`: ctsft.config_schema) start so
SCHEMA = "schema"


def config_dir() -> Path:
    """The Hydra config folder: config/hydra of the repository, or $CTSFT_CONFIG_DIR."""
    return Path(os.environ.get(CONFIG_DIR_ENV, REPO_ROOT / "config" / "hydra")).resolve()


def group_config(group: str, name: str) -> dict[str, Any]:
    """config/hydra/<group>/<name>.yaml with its `defaults:` chain of the same group merged in,
    as Hydra composes it (the schema it extends holds types, not values: skipped)."""
    data = yaml.safe_load((config_dir() / group / f"{name}.yaml").read_text()) or {}
    chain = list(data.pop("defaults", []))
    if "_self_" not in chain:
        chain.append("_self_")  # Hydra's place for it when the list does not say
    merged: dict[str, Any] = {}
    for item in chain:
        if str(item).startswith(SCHEMA):
            continue  # a schema of ctsft.config_schema: the types, no values
        merged.update(data if item == "_self_" else group_config(group, str(item)))
    return merged


# -- methods -------------------------------------------------------------------------------------
def method_names() -> list[str]:
    """Values `method=` can take: the YAML files of config/hydra/method/."""
    return sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))


def method_config(name: str) -> dict[str, Any]:
    """config/hydra/method/<name>.yaml as composed (see `group_config`)."""
    return group_config("method", name)


def complete_method(method: Mapping[str, Any]) -> Mapping[str, Any]:
    """A method config as composed from its YAML; a bare `{"name": "ctsft", ...}` (a library
    call) is read over the YAML of that name, so its defaults come from one place."""
    if "kind" in method:
        return method
    name = str(method.get("name"))
    if name not in method_names():
        raise CtsftError(f"unknown method {name!r}: choose one of {', '.join(method_names())}")
    return {**method_config(name), **method}


def kind_facts(method: Mapping[str, Any]) -> KindFacts:
    """What the kind of a method config does; one line naming the choices otherwise."""
    kind = complete_method(method).get("kind")
    if kind not in METHOD_KINDS:
        raise CtsftError(f"method {method.get('name')!r} has kind {kind!r}: set method.kind to one of {', '.join(METHOD_KINDS)}")  # fmt: skip
    return METHOD_KINDS[kind]


def method_trains(method: Mapping[str, Any]) -> bool:
    """False for a method that evaluates its starting checkpoint as is (zero-shot)."""
    return kind_facts(method).trains


def method_needs_circuit(method: Mapping[str, Any]) -> bool:
    """True when the method reads the circuit JSON of the CD-T step."""
    return kind_facts(method).needs_circuit(complete_method(method))
