"""Compose the Hydra configuration without letting Hydra own the working directory.

Entry points and workflow scripts call `compose(overrides)`; the config folder is
`config/hydra` of the repository (or $CTSFT_CONFIG_DIR), so steps run the same from any cwd.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ctsft.data.tasks import TaskSpec, get_task
from ctsft.errors import CtsftError
from ctsft.provenance import REPO_ROOT

CONFIG_DIR_ENV = "CTSFT_CONFIG_DIR"


def config_dir() -> Path:
    return Path(os.environ.get(CONFIG_DIR_ENV, REPO_ROOT / "config" / "hydra")).resolve()


def compose(overrides: list[str] | None = None, config_name: str = "ctsft") -> DictConfig:
    """The composed config for `overrides` (Hydra syntax: `model=tiny_bert train.epochs=1`)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0]
        raise CtsftError(
            f"bad config override: {first} (see config/hydra for valid keys)"
        ) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def task_spec(cfg: DictConfig) -> TaskSpec:
    """The task description with the config's prompt and label words."""
    base = get_task(cfg.task.name)
    return dataclasses.replace(
        base, prompt=str(cfg.task.prompt), label_words=tuple(str(w) for w in cfg.task.label_words)
    )


def to_dict(cfg: DictConfig) -> dict:
    """A plain, resolved dict of the config, for provenance records."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def require(cfg: DictConfig, *keys: str) -> list[str]:
    """Values of `io.<key>`; a one-line error naming the missing override."""
    values = []
    for key in keys:
        value = cfg.io.get(key)
        if value in (None, ""):
            raise CtsftError(f"missing io.{key}: pass io.{key}=<path> on the command line")
        values.append(str(value))
    return values
