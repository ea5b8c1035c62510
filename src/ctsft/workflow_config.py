"""The Snakemake config, checked before any job starts: one line naming the key and what it takes.

The Snakefile calls `validate_config(config, schema)` (JSON schema, defaults filled in) and
workflow/rules/common.smk calls `check_config(config)` (what a schema cannot say: unique names,
a target different from its proxy, method variants whose overrides name a method and the circuit
it needs). Both raise `snakemake.exceptions.WorkflowError` with a one-line message, which
Snakemake prints under its `WorkflowError in file ...` header (instead of the schema dump and
"is not valid under any of the given schemas" of `snakemake.utils.validate`).

This module stays free of torch and Hydra: Snakemake imports it on every invocation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from ctsft.config_files import CONFIG_DIR_ENV as CONFIG_DIR_ENV  # re-exported
from ctsft.config_files import config_dir, kind_facts, method_config, method_names
from ctsft.data.tasks import DATA_ROOT_ENV, TASKS
from ctsft.facts import HUB_PREFIX, check_hub_id
from ctsft.provenance import REPO_ROOT


def __getattr__(name: str) -> Any:
    """`CIRCUIT_METHODS`: the method YAMLs that read a circuit JSON as composed (head methods,
    and LoRA, whose rank matches CT-SFT's budget unless `method.rank` is given), derived from the
    method kinds' facts so that it cannot drift from the YAML."""
    if name == "CIRCUIT_METHODS":
        return tuple(n for n in method_names() if method_facts(n, [])[0])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _error(message: str) -> Exception:
    from snakemake.exceptions import WorkflowError  # not at import: the steps import this module

    return WorkflowError(message)


# ---------------------------------------------------------------- schema
def load_schema(schema_file: str | os.PathLike[str]) -> dict:
    """The config schema (its language lists equal `ctsft.data.tasks.TASKS`: a test keeps them so,
    as Snakemake's own `validate` reads the file)."""
    return yaml.safe_load(Path(schema_file).read_text())


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _types(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _cast(value: str, types: list[str]) -> Any:
    """`value` read as the first of `types` it parses as (`--config` passes list items as strings)."""
    if "string" in types:
        return value
    for kind in types:
        try:
            if kind == "integer":
                return int(value)
            if kind == "number":
                number = float(value)
                return int(number) if re.fullmatch(r"[+-]?\d+", value.strip()) else number
            if kind == "boolean" and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if kind == "null" and value.lower() in ("null", "none", "~"):
                return None
        except ValueError:
            continue
    return value


def coerce(value: Any, schema: dict, root: dict | None = None) -> Any:
    """`value` with strings cast to the numbers and booleans the schema asks for.

    Snakemake's `--config 'seeds=[0,1]'` reads list and mapping items as strings; YAML config
    files give real numbers, which pass through unchanged.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if isinstance(value, str):
        return _cast(value, _types(schema))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce(v, schema["items"], root) for v in value]
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {k: coerce(v, props[k], root) if k in props else v for k, v in value.items()}
    return value


def _where(path) -> str:
    """`experiments[0].proxy` from a jsonschema error path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the config"


_NOUNS = {"integer": "an integer", "number": "a number", "string": "a string", "null": "null"}


def _expected(schema: dict, root: dict, plural: bool = False) -> str:
    """A short description of what `schema` accepts (`plural`: as list items)."""
    schema = _resolve(schema, root)
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(_expected(s, root) for s in schema[key])
    if "pattern" in schema:
        return schema.get("title") or f"a string matching {schema['pattern']}"
    words = []
    for kind in _types(schema):
        if kind == "array" and isinstance(schema.get("items"), dict):
            words.append(f"a list of {_expected(schema['items'], root, plural=True)}")
        else:
            noun = _NOUNS.get(kind, f"a {kind}")
            words.append(f"{kind}s" if plural and kind != "null" else noun)
    bounds = [
        f"{op} {schema[key]}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
        if key in schema
    ]
    if "minItems" in schema:
        bounds.append(f"with at least {schema['minItems']} item(s)")
    return " ".join([" or ".join(words or ["a valid value"]), *bounds])


def describe(error, root: dict) -> str:
    """One line for a jsonschema ValidationError: the key, the value, what is allowed."""
    where = _where(error.absolute_path)
    shown = repr(error.instance)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        place = "at the top level" if where == "the config" else f"in {where}"
        return f"config: {error.message} {place}; allowed keys: {allowed}"
    if error.validator == "required":
        place = "at the top level" if where == "the config" else f"in {where}"
        return f"config: {error.message} {place}"
    if error.validator == "uniqueItems":
        return f"config: {where} is {shown}, expected no repeated items"
    return f"config: {where} is {shown}, expected {_expected(error.schema, root)}"


def schema_error(config: dict, schema: dict) -> str | None:
    """One line for the most relevant schema violation of `config` (None when it validates)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(config))
    return None if error is None else describe(error, schema)


def validate_config(config: dict, schema_file: str | os.PathLike[str]) -> None:
    """Cast `--config` strings, check `config` against the schema (one line on error), then fill
    in the schema's defaults with Snakemake's `validate`."""
    from snakemake.utils import validate

    schema_file = Path(schema_file)
    if not schema_file.is_absolute():
        schema_file = REPO_ROOT / schema_file
    schema = load_schema(schema_file)
    if "k" in config and "k" not in schema.get("properties", {}):
        raise _error(
            "config: the key k was renamed ks (Snakemake's --config cannot set one-letter keys): "
            "write ks: [0.05]"
        )
    config.update(coerce(dict(config), schema))
    message = schema_error(config, schema)
    if message:
        raise _error(message)
    validate(config, str(schema_file))


# ---------------------------------------------------------------- semantic checks
def variant_method_config(method: str, overrides: list[str]) -> dict[str, Any]:
    """`method_config(method)` with a variant's `method.<key>=<value>` overrides applied."""
    config = method_config(method)
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+").startswith("method."):
            config[key.lstrip("+")[len("method.") :]] = yaml.safe_load(value)
    return config


def method_facts(method: str, overrides: list[str]) -> tuple[bool, bool]:
    """(needs a circuit, trains) of `method` with a variant's `method.<key>=<value>` overrides,
    as its kind declares them (`ctsft.facts.METHOD_KINDS`)."""
    config = variant_method_config(method, overrides)
    facts = kind_facts(config)
    return facts.needs_circuit(config), facts.trains


def model_names() -> list[str]:
    """Registered model names: the YAML files of config/hydra/model/ (hub.yaml is the template
    of hub:<org>/<name>)."""
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml") if p.stem != "hub")


def override_value(overrides: list[str], key: str) -> str | None:
    """The last value given to `key` in Hydra overrides (`key=v`, `+key=v`, `++key=v`)."""
    value = None
    for item in overrides:
        name, _, rest = str(item).partition("=")
        if name.lstrip("+") == key:
            value = rest
    return value


def _check_method(spec: dict) -> None:
    name = spec["name"]
    method = override_value(spec.get("overrides", []), "method")
    choices = ", ".join(method_names())
    if method is None:
        raise _error(
            f"config: method variant {name!r} has no method=<{choices.replace(', ', '|')}> "
            "in its overrides: add one"
        )
    if method not in method_names():
        raise _error(
            f"config: method variant {name!r}: unknown method={method}, choose one of {choices}"
        )
    circuit = bool(spec.get("circuit", False))
    needs_circuit, trains = method_facts(method, spec.get("overrides", []))
    if needs_circuit and not circuit:
        raise _error(
            f"config: method variant {name!r} (method={method}) trains selected heads or matches "
            "their budget: add circuit: true"
        )
    if circuit and not needs_circuit:
        raise _error(
            f"config: method variant {name!r} (method={method}) reads no circuit: drop circuit: true"
        )
    transfer = bool(spec.get("transfer", True))
    if trains != transfer:
        fix = (
            "add transfer: false"
            if transfer
            else "drop transfer: false (only zero_shot has no transfer)"
        )
        raise _error(f"config: method variant {name!r} (method={method}): {fix}")


def _check_experiment(i: int, exp: dict) -> None:
    task = TASKS[exp["task"]]
    where = f"experiments[{i}] ({exp['task']}, proxy {exp['proxy']})"
    langs = ", ".join(task.languages)
    if exp["proxy"] not in task.languages:
        raise _error(f"config: {where}: unknown proxy language, choose one of {langs}")
    targets = exp.get("targets", "all")
    if targets == "all":
        return
    unknown = [t for t in targets if t not in task.languages]
    if unknown:
        raise _error(f"config: {where}: unknown target {', '.join(unknown)}, choose from {langs}")
    if exp["proxy"] in targets:
        raise _error(
            f"config: {where}: target {exp['proxy']} is the proxy itself; remove it from targets "
            "(targets: all means every language but the proxy)"
        )


def _check_report_names(config: dict) -> None:
    """`compare` and `claims` name methods of this config, or methods of config/hydra/method
    that it does not run (skipped by the tables: a --configfile inherits the default config's
    comparisons); any other name is a typo."""
    names = [spec["name"] for spec in config["methods"]]
    known = set(names) | set(method_names())
    used = [
        (f"compare.{key}", name)
        for key, rivals in (config.get("compare") or {}).items()
        for name in [key, *(rivals or [])]
    ]
    used += [(f"claims.{role}", name) for role, name in (config.get("claims") or {}).items() if name]  # fmt: skip
    for where, name in used:
        if name not in known:
            raise _error(
                f"config: {where} names {name!r}, which is no method: use a name of methods "
                f"({', '.join(names)})"
            )


def check_config(config: dict) -> None:
    """What the schema cannot say; raises a one-line WorkflowError."""
    names = [spec["name"] for spec in config["methods"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _error(f"config: method names must be unique, repeated: {', '.join(dupes)}")
    seen = [(exp["task"], exp["proxy"]) for exp in config["experiments"]]
    dupes = sorted({f"{t}/{p}" for t, p in seen if seen.count((t, p)) > 1})
    if dupes:
        raise _error(
            f"config: one experiments entry per task and proxy, repeated: {', '.join(dupes)}"
        )
    for i, exp in enumerate(config["experiments"]):
        _check_experiment(i, exp)
    for spec in config["methods"]:
        _check_method(spec)
    _check_report_names(config)
    model = str(config["model"])
    if model.startswith(HUB_PREFIX):
        check_hub_id(model, _error, "config: ")
    elif model not in model_names():
        raise _error(
            f"config: unknown model {model!r}: choose one of {', '.join(model_names())} "
            "or hub:<org>/<name>"
        )


# ---------------------------------------------------------------- paths and overrides
def model_slug(model: str) -> str:
    """The path component of a model: its name, or `hub--<org>--<name>` for `hub:<org>/<name>`."""
    if model.startswith(HUB_PREFIX):
        return "hub--" + model[len(HUB_PREFIX) :].replace("/", "--")
    return model


def resolve_data_root(configured: str | None) -> str:
    """The absolute data folder the steps will read: config `data_root`, else $CTSFT_DATA_ROOT,
    else ../shared/data next to the repository (as `ctsft.data.data_root`, without requiring it
    to exist yet: a dry run plans without data)."""
    chosen = configured or os.environ.get(DATA_ROOT_ENV) or REPO_ROOT.parent / "shared" / "data"
    return str(Path(chosen).expanduser().resolve())


def hydra_quote(value: Any) -> str:
    """A Hydra override value that is read as this exact string (paths may hold `,` `=` or spaces)."""
    value = str(value)
    if re.fullmatch(r"[\w./+-]+", value) and not re.fullmatch(r"[\d.+-]+|true|false|null", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def step_overrides(
    config: dict[str, Any], step: str, experiment: tuple[str, str] | None = None
) -> list[str]:
    """The `hydra_overrides` a job of `step` gets: `all` then `step` of the config, then the same
    two of the experiment `(task, proxy)` it belongs to, so the experiment's own values win
    (Hydra keeps the last value of a key)."""
    layers = [config.get("hydra_overrides") or {}]
    if experiment is not None:
        layers += [
            exp.get("hydra_overrides") or {}
            for exp in config["experiments"]
            if (exp["task"], exp["proxy"]) == experiment
        ]
    return [str(o) for extras in layers for key in ("all", step) for o in extras.get(key, [])]
