"""Compose the Hydra configuration without letting Hydra own the working directory.

Entry points and workflow scripts call `compose(overrides)`; the config folder is
`config/hydra` of the repository (or $CTSFT_CONFIG_DIR), so steps run the same from any cwd.
`model=hub:<org>/<name>` becomes `model=hub model.name=hub:<org>/<name>` (a Hydra option name
cannot hold `:` or `/`), and every value of `VALUE_CHECKS` is checked once composed, so a wrong
type or range is one line naming the key, not an error deep inside torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ctsft.data.tasks import TaskSpec, get_task
from ctsft.errors import CtsftError
from ctsft.workflow_config import HUB_PREFIX, check_hub_id, config_dir


def hub_overrides(overrides: list[str]) -> list[str]:
    """`model=hub:<org>/<name>` as `model=hub` + `model.name='hub:<org>/<name>'` (config/hydra/model/hub.yaml)."""
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        value = value.strip("'\"")
        if sep and key.lstrip("+") == "model" and value.startswith(HUB_PREFIX):
            check_hub_id(value, CtsftError)
            out += [f"{key}=hub", f"model.name='{value}'"]
        else:
            out.append(item)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ints(low: int, null: bool = False) -> tuple[str, Callable[[Any], bool]]:
    return (
        ("null or " if null else "") + f"an integer >= {low}",
        lambda v: (null and v is None) or (_is_int(v) and v >= low),
    )


def _numbers(low: float, strict: bool = False, high: float | None = None, null: bool = False):
    bound = f"> {low}" if strict else f">= {low}"
    desc = f"a number in [{low}, {high}]" if high is not None else f"a number {bound}"
    return (
        ("null or " if null else "") + desc,
        lambda v: (
            (null and v is None)
            or (_is_number(v) and (v > low if strict else v >= low) and (high is None or v <= high))
        ),
    )


def _one_of(*choices: str) -> tuple[str, Callable[[Any], bool]]:
    return "one of " + ", ".join(choices), lambda v: v in choices


def _circuit_size(v: Any) -> bool:
    if _is_int(v) or (isinstance(v, float) and v.is_integer() and v > 1):
        return v >= 1
    return isinstance(v, float) and 0 < v <= 1


#: Allowed values of the choice keys (the code that reads them: train.loop._SCHEDULES,
#: cdt.scores.SCORE_KINDS, cdt.rules.CDTOptions.convention, cdt.baseline.POOLINGS,
#: cdt.rules.CDT_PATHS; a test keeps
#: them in step).
SCHEDULES = ("linear", "constant", "cosine")
SCORES = ("directional", "cdt_ratio", "ablation", "attribution")
CONVENTIONS = ("reference", "simple")
POOLINGS = ("all", "last", "first", "position")
CDT_PATHS = ("fast", "reference")

#: key -> (what it takes, check); keys a config does not have are skipped.
VALUE_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "seed": _ints(0),
    "threads": _ints(1, null=True),
    "train.epochs": _ints(0),
    "train.max_steps": _ints(1, null=True),
    "train.lr": _numbers(0, strict=True),
    "train.batch_size": _ints(1),
    "train.eval_batch_size": _ints(1),
    "train.grad_accum": _ints(1),
    "train.max_length": _ints(2),
    "train.weight_decay": _numbers(0),
    "train.warmup_ratio": _numbers(0, high=1),
    "train.schedule": _one_of(*SCHEDULES),
    "train.max_grad_norm": _numbers(0, strict=True, null=True),
    "train.patience": _ints(1),
    "train.resume_every": _ints(0),
    "train.log_every": _ints(1),
    "task.train_size": _ints(0, null=True),
    "task.eval_size": _ints(0, null=True),
    "cdt.k": ("a head count (an integer >= 1) or a fraction in (0, 1]", _circuit_size),
    "cdt.n_per_label": _ints(1),
    "cdt.pool_size": _ints(1, null=True),
    "cdt.head_batch": _ints(1),
    "cdt.batch_size": _ints(1),
    "cdt.random_sets": _ints(0),
    "cdt.bias_eps": _numbers(0),
    "cdt.score": _one_of(*SCORES),
    "cdt.path": _one_of(*CDT_PATHS),
    "cdt.convention": _one_of(*CONVENTIONS),
    "cdt.pooling": _one_of(*POOLINGS),
}

_ABSENT = object()


def check_values(cfg: DictConfig) -> None:
    """One line naming the first key of `VALUE_CHECKS` whose value is of the wrong type or range."""
    if "model" in cfg and OmegaConf.is_missing(cfg.model, "name"):
        raise CtsftError("model=hub needs a hub id: pass model=hub:<org>/<name>")
    for key, (expected, ok) in VALUE_CHECKS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not ok(value):
            shown = repr(value) if isinstance(value, str) else value
            raise CtsftError(f"bad config value {key}={shown}: expected {expected}")


def compose(overrides: list[str] | None = None, config_name: str = "ctsft") -> DictConfig:
    """The composed, value-checked config for `overrides` (Hydra syntax: `model=tiny_bert train.epochs=1`)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=hub_overrides(list(overrides or []))
            )
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0]
        raise CtsftError(
            f"bad config override: {first} (see config/hydra for valid keys)"
        ) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    check_values(cfg)
    return cfg


def task_spec(cfg: DictConfig) -> TaskSpec:
    """The task description with the config's prompt and label words."""
    base = get_task(cfg.task.name)
    return dataclasses.replace(
        base, prompt=str(cfg.task.prompt), label_words=tuple(str(w) for w in cfg.task.label_words)
    )


def coordinates(cfg: DictConfig, pair: bool = True) -> dict[str, Any]:
    """Where a record sits in the workflow's grid: task, model, proxy, target, variant, k, seed.

    Every record a step writes carries these, so the tables never read them from a path. The
    rules pass `grid.*` (ctsft.layout); by hand, the method name is the variant. A proxy-level
    record (`pair=False`: scores, circuit, faithfulness) has no target or variant.
    """
    grid = cfg.get("grid") or {}
    k = grid.get("k")
    return {
        "task": str(cfg.task.name),
        "model": str(grid.get("model") or cfg.model.name),
        "proxy": str(cfg.proxy),
        "target": str(cfg.target) if pair else None,
        "variant": str(grid.get("variant") or cfg.method.name) if pair else None,
        "k": None if k is None else str(k),
        "seed": int(cfg.seed),
    }


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
