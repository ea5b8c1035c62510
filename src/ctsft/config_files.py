"""The YAML files of config/hydra, read without Hydra: the one place every default lives.

Hydra composes them for the steps; Snakemake's config check, the method registry and the
library's dataclasses (`TrainConfig`, `CDTOptions`, the task prompts) read the same files through
`group_config`, so no default is typed twice. Imports nothing of ctsft but `provenance`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

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
