"""Compose the Hydra configuration without letting Hydra own the working directory.

Entry points and workflow scripts call `compose(overrides)`; the config folder is
`config/hydra` of the repository (or $CTSFT_CONFIG_DIR), so steps run the same from any cwd.
`model=hub:<org>/<name>` becomes `model=hub model.name=hub:<org>/<name>` (a Hydra option name
cannot hold `:` or `/`). Every value is typed by its group's schema (`ctsft.config_schema`, which
the YAML files extend) as Hydra composes, and every value of `VALUE_CHECKS` is range-checked once
composed, so a wrong type, an unknown key or a value out of range is one line naming the key (and
the YAML file it is in), not an error deep inside torch.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ctsft.config_files import group_config
from ctsft.config_schema import (
    GROUP_SCHEMAS,
    METHOD_SCHEMAS,
    CtsftSchema,
    register,
    schema_entries,
)
from ctsft.data.tasks import TaskSpec, get_task
from ctsft.errors import CtsftError
from ctsft.facts import HUB_PREFIX, SCORE_KINDS, check_hub_id
from ctsft.provenance import REPO_ROOT
from ctsft.workflow_config import config_dir


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
#: facts.SCORE_KINDS, cdt.rules.CDTOptions.convention, cdt.baseline.POOLINGS,
#: cdt.rules.CDT_PATHS; a test keeps
#: them in step).
SCHEDULES = ("linear", "constant", "cosine")
SCORES = SCORE_KINDS
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


def _shown(value: Any) -> str:
    """A value as typed: `'fast'`, `0` (a float field holds `train.lr=0` as 0.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def check_values(cfg: DictConfig) -> None:
    """One line naming the first key of `VALUE_CHECKS` whose value is of the wrong type or range."""
    if "model" in cfg and OmegaConf.is_missing(cfg.model, "name"):
        raise CtsftError("model=hub needs a hub id: pass model=hub:<org>/<name>")
    for key, (expected, ok) in VALUE_CHECKS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not ok(value):
            raise CtsftError(f"bad config value {key}={_shown(value)}: expected {expected}")


# ---------------------------------------------------------------- types and unknown keys
def yaml_file(group: str, name: str) -> str:
    """config/hydra/<group>/<name>.yaml as a user would type it (relative to the repository)."""
    path = config_dir() / group / f"{name}.yaml"
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


#: the config groups (folders of config/hydra)
GROUPS = (*GROUP_SCHEMAS, "method")

_NOUNS = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}


def expected_type(schema: Any, key: str) -> str:
    """What field `key` of the dataclass `schema` takes, in words."""
    hints = typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}
    kind = hints.get(key, Any)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    nullable = typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1
    kind = args[0] if nullable else kind
    noun = _NOUNS.get(kind, "a list" if typing.get_origin(kind) is list else "another value")
    return ("null or " if nullable else "") + noun


def close_keys(key: str, allowed: Iterable[str]) -> str:
    """`; did you mean a, b?` (difflib), or `; keys: ...` when nothing is close."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else f"; its keys: {', '.join(allowed)}"


def _schema_keys(schema: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []


def _value_error(key: str, value: Any, schema: Any) -> str:
    if key in VALUE_CHECKS:
        return f"bad config value {key}={_shown(value)}: expected {VALUE_CHECKS[key][0]}"
    expected = expected_type(schema, key.rsplit(".", 1)[-1])
    return f"bad config value {key}={_shown(value)}: expected {expected}"


def _causes(err: BaseException) -> Iterable[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]


def _names(override: str, key: str) -> bool:
    """Whether `override` sets `key` or a key below it."""
    name = override.lstrip("+~").split("=", 1)[0]
    return name == key or name.startswith(f"{key}.")


def compose_error(err: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line for a Hydra/OmegaConf composition error: an unknown key or a value of the wrong
    type, in a YAML file (named) or an override; anything else as Hydra's first line."""
    text = str(err).strip()
    in_file = re.match(r"In '([\w/]+)': (\w+) raised while composing config:\n(.*)", text, re.S)
    if in_file:  # a YAML file of config/hydra merged into its schema
        group, _, name = in_file.group(1).rpartition("/")
        where, detail = yaml_file(group, name) if group else in_file.group(1), in_file.group(3)
        full_key = re.search(r"full_key: (\S+)", detail)
        key = full_key.group(1) if full_key else "?"
        unknown = re.match(r"Key '(\w+)' not in '(\w+)'", detail)
        if unknown:
            leaf = unknown.group(1)
            schema = _schema_named(unknown.group(2))
            return f"{where}: unknown key {leaf}{close_keys(leaf, _schema_keys(schema))}"
        value = re.match(r"Value '(.*?)'", detail)
        if value:
            schema = _schema_named((re.search(r"object_type=(\w+)", detail) or [None, ""])[1])
            return f"{where}: {_value_error(key, value.group(1), schema)}"
    for cause in _causes(err):
        full_key = getattr(cause, "full_key", None)
        if not isinstance(cause, OmegaConfBaseException) or not full_key:
            continue
        schema = getattr(cause, "object_type", None)
        if "not in" in str(cause) or "not in struct" in str(cause):
            parent, _, leaf = str(full_key).rpartition(".")
            group = parent.split(".", 1)[0]
            home = f"config/hydra/{group}/" if group in GROUPS else "config/hydra/ctsft.yaml"
            where = f"in {parent} ({home})" if parent else "at the top level"
            given = next((o for o in overrides if _names(o, str(full_key))), full_key)
            return f"bad config override {given}: unknown key {leaf} {where}{close_keys(leaf, _schema_keys(schema))}"
        if type(cause).__name__ == "ValidationError":
            return _value_error(str(full_key), getattr(cause, "value", None), schema)
    first = text.splitlines()[0] if text else type(err).__name__
    return f"bad config override: {first} (see config/hydra for valid keys)"


def _schema_named(name: str) -> Any:
    schemas = [CtsftSchema, *GROUP_SCHEMAS.values(), *METHOD_SCHEMAS.values()]
    schemas += [type(getattr(CtsftSchema(), f.name)) for f in dataclasses.fields(CtsftSchema)]
    return next((s for s in schemas if getattr(s, "__name__", None) == name), None)


def type_method(cfg: DictConfig, where: str) -> None:
    """A method YAML that extends no schema (no defaults list) typed by its kind's schema, so its
    keys are checked all the same; a kind the schemas do not know is left to the registry."""
    method = cfg.get("method")
    if method is None or OmegaConf.get_type(method) is not dict:
        return
    schema = METHOD_SCHEMAS.get(str(method.get("kind")))
    if schema is None:
        return
    unknown = [k for k in method if k not in _schema_keys(schema)]
    if unknown:
        raise CtsftError(
            f"{where}: unknown key {unknown[0]}{close_keys(unknown[0], _schema_keys(schema))}"
        )
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), method)
    except OmegaConfBaseException as err:
        key = f"method.{getattr(err, 'key', '?')}"
        raise CtsftError(
            f"{where}: {_value_error(key, getattr(err, 'value', None), schema)}"
        ) from None
    with open_dict(cfg):
        cfg.method = typed


def check_complete(
    cfg: DictConfig, files: dict[str, str], groups: Iterable[str] | None = None
) -> None:
    """One line naming a key no YAML gave a value (`???`), and the group's file (`groups`: look
    only there)."""
    if groups is None:
        missing = sorted(OmegaConf.missing_keys(cfg))
    else:
        missing = sorted(f"{g}.{k}" for g in groups for k in OmegaConf.missing_keys(cfg[g]))
    if missing:
        key = missing[0]
        group = key.split(".", 1)[0]
        where = files.get(group, "config/hydra/ctsft.yaml")
        raise CtsftError(f"{where}: {key} has no value: set it there or pass {key}=<value>")


def compose(overrides: list[str] | None = None, config_name: str = "ctsft") -> DictConfig:
    """The composed, typed, value-checked config for `overrides` (Hydra syntax:
    `model=tiny_bert train.epochs=1`)."""
    return compose_with_files(overrides, config_name)[0]


def compose_with_files(
    overrides: list[str] | None = None, config_name: str = "ctsft"
) -> tuple[DictConfig, dict[str, str]]:
    """`compose`, and the YAML file each group was read from (group -> path, for messages)."""
    register()
    overrides = hub_overrides(list(overrides or []))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=True
            )
    except (HydraException, OmegaConfBaseException) as err:
        raise CtsftError(compose_error(err, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    files = {g: yaml_file(g, str(o)) for g, o in choices.items() if o and "/" not in g}
    return finish(cfg, files), files


def finish(
    cfg: DictConfig, files: dict[str, str], groups: Iterable[str] | None = None
) -> DictConfig:
    """Type a schema-less method YAML, refuse keys without a value, check ranges (VALUE_CHECKS).
    `groups`: only these groups can lack a value (the rest was checked already)."""
    check_values_first = "model" in cfg and OmegaConf.is_missing(cfg.model, "name")
    if check_values_first:
        check_values(cfg)  # model=hub without an id: its own message
    type_method(cfg, files.get("method", "config/hydra/method"))
    check_complete(cfg, files, groups)
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


# ---------------------------------------------------------------- composing without Hydra's loader
# The workflow composes every job's config before any job starts (ctsft.job_configs): one Hydra
# composition per task, then each job's overrides applied to a copy, group options read from
# their YAML into their schema (what Hydra does, at a fraction of its cost per job).
def _chain_schema(group: str, name: str) -> Any:
    """The schema a group YAML extends, through its defaults chain (None: extends none)."""
    data = yaml.safe_load((config_dir() / group / f"{name}.yaml").read_text()) or {}
    for item in data.get("defaults", []):
        entry = schema_entries().get((group, str(item)))
        found = entry or (None if str(item) == "_self_" else _chain_schema(group, str(item)))
        if found is not None:
            return found
    return None


def group_node(group: str, name: str) -> DictConfig:
    """config/hydra/<group>/<name>.yaml typed by the schema it extends, as Hydra composes it."""
    return copy.deepcopy(_group_node(str(config_dir()), group, name))


@functools.lru_cache(maxsize=256)
def _group_node(folder: str, group: str, name: str) -> DictConfig:
    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    if name not in options:
        raise CtsftError(f"unknown {group}={name}: choose one of {', '.join(options)}")
    where = yaml_file(group, name)
    schema = _chain_schema(group, name)
    try:
        data = group_config(group, name)
        if schema is None:
            return OmegaConf.create(data)
        return OmegaConf.merge(OmegaConf.structured(schema), data)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = str(getattr(err, "key", "?"))
        if "not in" in str(err):
            close = close_keys(key, _schema_keys(schema))
            raise CtsftError(f"{where}: unknown key {key}{close}") from None
        value = getattr(err, "value", None)
        raise CtsftError(f"{where}: {_value_error(f'{group}.{key}', value, schema)}") from None


@functools.lru_cache(maxsize=1024)
def _parse_override(text: str) -> Any:
    """Hydra's reading of one override (an `Override`); one line when it is malformed."""
    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except HydraException as err:
        first = str(err).strip().splitlines()[0]
        raise CtsftError(f"malformed override {text!r}: {first}") from None


def apply_overrides(cfg: DictConfig, overrides: list[str], files: dict[str, str]) -> None:
    """Hydra overrides applied to a composed `cfg` in place: `group=option` replaces the group,
    `key=value` sets a typed value (`++`/`+` add a key); one line (CtsftError) on the first bad
    one. `files` records the YAML each group now comes from."""
    for text in overrides:
        item = _parse_override(text)
        key = item.key_or_group
        if item.is_sweep_override():
            raise CtsftError(f"override {text}: a sweep (a,b) cannot be a job's value")
        if item.is_delete():
            continue
        value = item.value()
        try:
            if key in GROUPS and item.package is None:
                files[key] = yaml_file(key, str(value))
                with open_dict(cfg):
                    cfg[key] = group_node(key, str(value))
            else:
                OmegaConf.update(cfg, key, value, merge=True, force_add=item.is_force_add())
        except OmegaConfBaseException as err:
            raise CtsftError(compose_error(err, [text])) from None
