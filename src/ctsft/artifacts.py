"""The one validating reader of each artifact one step hands to the next, beside its writer.

Each reader either returns a well-formed artifact or raises a one-line `CtsftError` that names
the file, says what is wrong with it and which rule remakes it (`snakemake --forcerun <rule>`),
so a truncated, corrupt or mismatched file never becomes a traceback deep inside torch or
pandas, nor a silently wrong result. There is no second reader of these formats (the lower layers
that compute an artifact call the writer here), and the file names shared with other layers are
in `ctsft.facts`.

| artifact | rule | writer | reader |
|---|---|---|---|
| `mu.safetensors` + `mu.safetensors.json` | mean_baseline | `write_mu` | `read_mu` |
| `scores.tsv` (+ `scores.tsv.json`, `sidecar`) | score_heads | `write_scores` | `read_scores` |
| `k{k}/circuit.json` | select_circuit | `io.write_json` | `read_circuit` |
| `k{k}/faithfulness.json` | faithfulness | `io.write_json` | `read_faithfulness` |
| `metrics.json` | evaluate / evaluate_proxy | `io.write_json` | `read_metrics` |
| a model folder (base model, theta_1, transferred) | prepare_model / finetune / transfer | `ctsft.models` | `check_checkpoint` |
| its training record (`task_model.json` -> `training`) | finetune / transfer | `ctsft.models` | `read_training_record` |
| its `provenance.json` (a prepared model) | prepare_model | `ctsft.models.prepare` | `read_model_provenance` |

Model folders are written by `ctsft.models` (torch and transformers code); the checks here read
only their JSON records and safetensors headers, so every layer can call them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ctsft.config_files import config_dir, group_config
from ctsft.errors import CtsftError
from ctsft.facts import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILE,
    MODEL_TYPES,
    PROVENANCE_FILE,
    SCORE_KINDS,
    TASK_MODEL_FILE,
    TRAINED_FILE,
    TSV_COLUMNS,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
)
from ctsft.io import atomic_path, write_json

if TYPE_CHECKING:  # pandas is imported where a table is read: models import this module
    import pandas as pd

MU_KEY = "mu"
CIRCUIT_KEYS = ("k", "circuit", "near_zero", "random")
FAITHFULNESS_KEYS = ("k", "clean_accuracy", "clean_margin", "circuit", "near_zero", "random")
ABLATION_KEYS = ("accuracy", "margin_drop")


class HeadGeometry(Protocol):
    """What the readers need of a model (`ctsft.adapters.Geometry` has it)."""

    n_layers: int
    n_heads: int
    d_head: int


def forcerun(rule: str) -> str:
    """The advice that ends every artifact error."""
    return f"rerun with `snakemake --forcerun {rule}`"


def _error(what: str, path: Path, problem: str, rule: str) -> CtsftError:
    return CtsftError(f"{what} {path} {problem}: {forcerun(rule)}")


def _missing(what: str, path: Path, rule: str) -> CtsftError:
    return CtsftError(
        f"{what} {path} does not exist: run the {rule} rule first (`snakemake --forcerun {rule}`)"
    )


def _json_object(what: str, path: Path, rule: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object from `path` holding every one of `keys`, or a one-line error (missing, not
    UTF-8, not JSON, not an object, a key absent)."""
    if not path.is_file():
        raise _missing(what, path, rule)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _error(what, path, "is not UTF-8 text (corrupt)", rule) from None
    except json.JSONDecodeError as err:
        raise _error(
            what, path, f"is not valid JSON ({err.msg}, line {err.lineno})", rule
        ) from None
    if not isinstance(data, dict):
        raise _error(what, path, f"holds a JSON {type(data).__name__}, not an object", rule)
    missing = [key for key in keys if key not in data]
    if missing:
        raise _error(what, path, f"has no {', '.join(repr(m) for m in missing)} entry", rule)
    return data


def _safetensors_keys(path: Path) -> tuple[list[str] | None, str]:
    """(tensor names, "") of a safetensors file, or (None, why) when it is truncated or corrupt.

    Only the header is read (cheap even for a large checkpoint); safetensors checks there that
    the data the header describes is all in the file, which is what a truncated copy lacks.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys()), ""
    except (SafetensorError, OSError, ValueError) as err:
        return None, (str(err).splitlines()[0] if str(err) else type(err).__name__)


def sidecar(path: str | Path) -> Path:
    """`<artifact>.json`: the provenance record written next to mu and next to the score table."""
    return Path(str(path) + ".json")


# -- mu ------------------------------------------------------------------------------------------
def write_mu(path: str | Path, mu: torch.Tensor, record: dict[str, Any]) -> None:
    """mu as safetensors plus its provenance record `<path>.json` (both written atomically)."""
    write_json(sidecar(path), record)  # first: a failure never leaves mu without its record
    with atomic_path(path) as tmp:
        save_file(
            {MU_KEY: mu.contiguous()}, str(tmp), metadata={"shape": json.dumps(list(mu.shape))}
        )


def read_mu(
    path: str | Path, geometry: HeadGeometry | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """mu `[layer, head, d_head]` (or `[layer, pos, head, d_head]`) and its sidecar record.

    Checks: both files exist and parse, the tensor is finite, its shape matches the sidecar's
    record and, given `geometry`, the model (a mu of another model is refused, not broadcast).
    """
    what, rule = "mean baseline", "mean_baseline"
    path = Path(path)
    if not path.is_file():
        raise _missing(what, path, rule)
    keys, why = _safetensors_keys(path)
    if keys is None:
        raise _error(what, path, f"is truncated or not a safetensors file ({why})", rule)
    if MU_KEY not in keys:
        raise _error(what, path, f"has no tensor {MU_KEY!r} (it holds {keys})", rule)
    with safe_open(str(path), framework="pt") as handle:
        mu = handle.get_tensor(MU_KEY)
    if mu.dim() not in (3, 4):
        raise _error(what, path, f"has shape {list(mu.shape)}, not [layer, head, d_head]", rule)
    if not mu.is_floating_point() or not bool(torch.isfinite(mu).all()):
        raise _error(what, path, "holds NaN or infinite values", rule)
    record = _json_object("mean baseline record", sidecar(path), rule)
    recorded = record.get("shape")
    if recorded is not None and list(recorded) != list(mu.shape):
        raise _error(
            what, path, f"has shape {list(mu.shape)} but its record says {list(recorded)}", rule
        )
    if geometry is not None:
        want = (geometry.n_layers, geometry.n_heads, geometry.d_head)
        got = (mu.shape[0], mu.shape[-2], mu.shape[-1])
        if got != want:
            raise _error(
                what,
                path,
                f"is for {got[0]} layers x {got[1]} heads x {got[2]} dims, the model has "
                f"{want[0]} x {want[1]} x {want[2]} (made on another model)",
                rule,
            )
    return mu, record


# -- scores --------------------------------------------------------------------------------------
def write_scores(path: str | Path, table: pd.DataFrame) -> None:
    """The head score table (`ctsft.cdt.scores.scores_table`) as TSV, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.9g")


def read_scores(path: str | Path, geometry: HeadGeometry | None = None) -> pd.DataFrame:
    """The head score table (a `pandas.DataFrame`, integer layer/head, finite scores).

    Checks: the columns of `ctsft.facts.TSV_COLUMNS`, numbers where numbers belong, no NaN,
    known score kinds, every (layer, head) exactly once, a complete layer x head grid, and given
    `geometry`, exactly the model's heads.
    """
    import pandas as pd  # deferred: models import this module; bench_gpu runs without pandas

    what, rule = "head score table", "score_heads"
    path = Path(path)
    if not path.is_file():
        raise _missing(what, path, rule)
    try:
        df = pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        raise _error(what, path, "is empty", rule) from None
    except UnicodeDecodeError:
        raise _error(what, path, "is not UTF-8 text (corrupt)", rule) from None
    except (pd.errors.ParserError, ValueError) as err:
        reason = str(err).strip().splitlines()[-1]
        raise _error(what, path, f"is not a tab-separated table ({reason})", rule) from None
    missing = [c for c in TSV_COLUMNS if c not in df.columns]
    if missing:
        raise _error(
            what, path, f"lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})", rule
        )
    if df.empty:
        raise _error(what, path, "has a header but no rows", rule)
    for column in ("layer", "head", "score", "rank", "n_examples"):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))  # non-numeric was coerced to NaN
        if bad.any():
            row = int(bad.nonzero()[0][0])
            raise _error(
                what,
                path,
                f"has a missing, NaN or non-numeric {column} in data row {row + 1} "
                f"({df[column].iloc[row]!r})",
                rule,
            )
        if column != "score" and not bool((values == values.round()).all() and (values >= 0).all()):
            raise _error(what, path, f"has a {column} that is not a whole number >= 0", rule)
        df[column] = values.astype(float if column == "score" else int)
    kinds = set(df["score_kind"].astype(str))
    if kinds - set(SCORE_KINDS):
        raise _error(
            what,
            path,
            f"has unknown score_kind {sorted(kinds - set(SCORE_KINDS))} "
            f"(expected {', '.join(SCORE_KINDS)})",
            rule,
        )
    pairs = list(zip(df["layer"], df["head"], strict=True))
    if len(set(pairs)) != len(pairs):
        dup = next(p for p in pairs if pairs.count(p) > 1)
        raise _error(what, path, f"lists head (layer {dup[0]}, head {dup[1]}) twice", rule)
    n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    if geometry is not None:
        if (n_layers, n_heads) != (geometry.n_layers, geometry.n_heads) or len(df) != (
            geometry.n_layers * geometry.n_heads
        ):
            raise _error(
                what,
                path,
                f"has {len(df)} heads (up to layer {n_layers - 1}, head {n_heads - 1}), the model "
                f"has {geometry.n_layers} layers x {geometry.n_heads} heads (scored on another "
                "model?)",
                rule,
            )
    elif len(df) != n_layers * n_heads:
        raise _error(
            what,
            path,
            f"has {len(df)} rows, not the {n_layers} x {n_heads} = {n_layers * n_heads} heads of a "
            "complete layer x head grid",
            rule,
        )
    return df


# -- circuit -------------------------------------------------------------------------------------
def _head_list(value: Any) -> list[tuple[int, int]] | None:
    """`[[layer, head], ...]` as tuples, or None when it is not a list of integer pairs."""
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in item)
        ):
            return None
        out.append((int(item[0]), int(item[1])))
    return out


def read_circuit(path: str | Path, geometry: HeadGeometry | None = None) -> dict[str, Any]:
    """The circuit JSON of select_circuit: k and the circuit / near_zero / random head lists.

    Checks: valid JSON object with every key, k a positive integer, each list k distinct
    `[layer, head]` pairs and, given `geometry`, every head inside the model.
    """
    what, rule = "circuit file", "select_circuit"
    path = Path(path)
    data = _json_object(what, path, rule, CIRCUIT_KEYS)
    k = data["k"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise _error(what, path, f"has k={k!r}, not a positive whole number", rule)
    for key in CIRCUIT_KEYS[1:]:
        heads = _head_list(data[key])
        if heads is None:
            raise _error(
                what, path, f"has a {key!r} entry that is not a list of [layer, head]", rule
            )
        if len(heads) != k:
            raise _error(what, path, f"lists {len(heads)} {key!r} heads, but k is {k}", rule)
        if len(set(heads)) != len(heads):
            raise _error(what, path, f"repeats a head in {key!r}", rule)
        if geometry is not None:
            for layer, head in heads:
                if layer >= geometry.n_layers or head >= geometry.n_heads:
                    raise _error(
                        what,
                        path,
                        f"names head ({layer}, {head}) in {key!r}, outside this model "
                        f"({geometry.n_layers} layers x {geometry.n_heads} heads: selected on "
                        "another model?)",
                        rule,
                    )
    total = data.get("n_heads_total")
    if geometry is not None and total is not None and total != geometry.n_layers * geometry.n_heads:
        raise _error(
            what,
            path,
            f"was selected among {total} heads, this model has "
            f"{geometry.n_layers * geometry.n_heads}",
            rule,
        )
    return data


# -- faithfulness --------------------------------------------------------------------------------
def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_faithfulness(path: str | Path) -> dict[str, Any]:
    """The faithfulness report: clean accuracy/margin, the circuit, NearZero and random ablations."""
    what, rule = "faithfulness report", "faithfulness"
    path = Path(path)
    data = _json_object(what, path, rule, FAITHFULNESS_KEYS)
    if not _finite_number(data["clean_accuracy"]) or not 0 <= data["clean_accuracy"] <= 1:
        raise _error(what, path, f"has clean_accuracy {data['clean_accuracy']!r}", rule)
    sets = [("circuit", data["circuit"]), ("near_zero", data["near_zero"])]
    if not isinstance(data["random"], list):
        raise _error(what, path, "has a 'random' entry that is not a list", rule)
    sets += [(f"random[{i}]", entry) for i, entry in enumerate(data["random"])]
    for name, entry in sets:
        if not isinstance(entry, dict) or not all(
            _finite_number(entry.get(key)) for key in ABLATION_KEYS
        ):
            raise _error(
                what, path, f"has no finite {' and '.join(ABLATION_KEYS)} for {name}", rule
            )
    return data


# -- metrics -------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics.json of the evaluate step (the proxy's own, `proxy_eval/`, for forgetting)."""
    path = Path(path)
    rule = "evaluate_proxy" if path.parent.name == "proxy_eval" else "evaluate"
    what = "metrics file"
    data = _json_object(what, path, rule)
    for key in ("accuracy", "proxy_accuracy"):
        if key not in data:
            raise _error(
                what, path, f"has no {key!r}: not a metrics.json of the evaluate step", rule
            )
        if not _finite_number(data[key]) or not 0 <= data[key] <= 1:
            raise _error(what, path, f"has {key} {data[key]!r}, not a number in [0, 1]", rule)
    return data


# -- checkpoints ---------------------------------------------------------------------------------
def checkpoint_rule(folder: str | Path) -> str:
    """The rule that writes a model folder: the proxy checkpoint, a transfer, or the base model."""
    path = Path(folder)
    if path.name == "proxy_checkpoint":
        return "finetune"
    if path.name == "checkpoint" or (path / TASK_MODEL_FILE).is_file():
        return "transfer"
    return "prepare_model"


def _recorded_model(folder: Path, meta: dict[str, Any] | None) -> str | None:
    """The registered model name a folder was made from (task_model.json or provenance.json)."""
    if meta:
        model = ((meta.get("training") or {}).get("config") or {}).get("model")
        if isinstance(model, dict) and model.get("name"):
            return str(model["name"])
    prov = folder / PROVENANCE_FILE
    if prov.is_file():
        try:
            name = json.loads(prov.read_text(encoding="utf-8")).get("model")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        return str(name) if name else None
    return None


def check_checkpoint(
    folder: str | Path, task: str, kind: str | None = None, model: str | None = None
) -> str:
    """Check a model folder before `from_pretrained` sees it; returns the model kind to load.

    Refused with one line each: no folder / config.json, a config.json that is not JSON or has
    no model_type, missing or truncated weights, a task_model.json that is not JSON, a checkpoint
    trained on another task, of another kind than `kind` (encoder vs causal: an encoder config
    would silently put a fresh classifier on a causal LM), an architecture that is not of that
    kind, or, given `model`, made from another registered model than `model`.
    """
    path = Path(folder)
    rule = checkpoint_rule(path)
    what = "model folder"
    stored = _stored_checkpoint(path, rule)
    if stored is not None:  # weights stored relative to a base folder: its own checks follow
        kind = _check_record(path, stored, task, kind, rule)
        _check_made_from(path, stored, model, rule)
        return kind
    if not (path / "config.json").is_file():
        raise _error(what, path, "is not a model folder (no config.json)", rule)
    config = _json_object(what + " config", path / "config.json", rule)
    model_type = config.get("model_type")
    if not model_type:
        raise _error(what, path, "has a config.json without model_type", rule)
    index = path / WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(
            set(_json_object("weights index", index, rule).get("weight_map", {}).values())
        )
        weights = [path / name for name in shards]
    else:
        weights = [path / WEIGHTS_FILE]
    _check_weights(path, weights, rule)
    meta: dict[str, Any] | None = None
    meta_path = path / TASK_MODEL_FILE
    if meta_path.is_file():
        meta = _json_object("checkpoint record", meta_path, rule)
        kind = _check_record(path, meta, task, kind, rule)
    elif kind is None and (prov := read_model_provenance(path)) is not None:
        kind = prov.get("kind")
    if kind in MODEL_TYPES and model_type not in MODEL_TYPES[kind]:
        other = next((k for k, types in MODEL_TYPES.items() if model_type in types), None)
        family = f"a {other} architecture" if other else "not a supported architecture"
        raise _error(
            "model folder",
            path,
            f"holds a {model_type} model, {family}, but model.kind is {kind} (wrong model "
            "folder or model= setting?)",
            rule,
        )
    _check_made_from(path, meta, model, rule)
    _check_family(path, config, model, rule)
    if kind not in ("encoder", "causal"):
        raise CtsftError(f"model kind must be 'encoder' or 'causal', got {kind!r}")
    return kind


def _check_weights(path: Path, files: list[Path], rule: str) -> None:
    """Each weights file present, with a readable safetensors header and at least one tensor."""
    for file in files:
        if not file.is_file():
            raise _error("model folder", path, f"has no {file.name}", rule)
        keys, why = _safetensors_keys(file)
        if keys is None:
            raise CtsftError(
                f"cannot load model from {path}: {file.name} is truncated or corrupt ({why}); "
                f"re-create it: {forcerun(rule)}"
            )
        if not keys:
            raise _error("weights", file, "hold no tensor", rule)


#: The files of each stored checkpoint format (`format` in task_model.json; see
#: ctsft.models.checkpoint, their writer and reader).
STORED_FORMATS = {"trained": (TRAINED_FILE,), "lora": (ADAPTER_FILE, ADAPTER_CONFIG_FILE)}


def _stored_checkpoint(path: Path, rule: str) -> dict[str, Any] | None:
    """The record of a checkpoint that stores only what it trained (a `base` to load first and
    its own weights checked here), or None for a full model folder."""
    meta_path = path / TASK_MODEL_FILE
    if (path / "config.json").is_file() or not meta_path.is_file():
        return None
    meta = _json_object("checkpoint record", meta_path, rule)
    fmt, base = meta.get("format"), meta.get("base")
    if fmt not in STORED_FORMATS or not isinstance(base, dict) or "path" not in base:
        raise _error("checkpoint record", meta_path, "names no base model and format", rule)
    _check_weights(
        path, [path / n for n in STORED_FORMATS[fmt] if n.endswith(".safetensors")], rule
    )
    for name in STORED_FORMATS[fmt]:
        if not (path / name).is_file():
            raise _error("checkpoint", path, f"has no {name}", rule)
    return meta


def _check_record(path: Path, meta: dict[str, Any], task: str, kind: str | None, rule: str) -> str:
    """A checkpoint record against the requested task and kind; returns the recorded kind."""
    for key in ("kind", "task"):
        if key not in meta:
            raise _error("checkpoint record", path / TASK_MODEL_FILE, f"has no {key!r}", rule)
    if meta["task"] != task:
        raise CtsftError(
            f"checkpoint {path} was trained on {meta['task']}, not {task}: set "
            f"task={meta['task']} or {forcerun(rule)}"
        )
    if kind is not None and meta["kind"] != kind:
        raise _error(
            "checkpoint",
            path,
            f"was saved as a model of kind {meta['kind']}, but model.kind is {kind} "
            "(another model's checkpoint?)",
            rule,
        )
    return str(meta["kind"])


def _check_family(path: Path, config: dict[str, Any], model: str | None, rule: str) -> None:
    """The folder's own config.json proves its family: its model_type must be one the registered
    model's YAML lists (`model_types`), so a copied or hand-made folder without provenance.json
    cannot pass for another model."""
    yaml_file = config_dir() / "model" / f"{model}.yaml"
    if model is None or not yaml_file.is_file():
        return  # no model named, or a hub model: any supported family
    expected = group_config("model", model).get("model_types") or []
    model_type = config.get("model_type")
    if expected and model_type not in expected:
        archs = ", ".join(map(str, config.get("architectures") or [])) or "no architectures"
        raise CtsftError(
            f"model folder {path} holds a {model_type} model ({archs}) by its config.json, but "
            f"model={model} is {' or '.join(expected)}: set model= to the folder's model, or "
            f"{forcerun(rule)}"
        )


def _check_made_from(path: Path, meta: dict[str, Any] | None, model: str | None, rule: str) -> None:
    """Given `model`, the registered model the folder was made from must be that one."""
    made_from = _recorded_model(path, meta)
    if model is not None and made_from is not None and made_from != model:
        raise CtsftError(
            f"model folder {path} was made from model {made_from}, not {model}: set "
            f"model={made_from} or {forcerun(rule)}"
        )


# -- model records -------------------------------------------------------------------------------
def read_training_record(folder: str | Path) -> dict[str, Any] | None:
    """The training record of a checkpoint (`training` in its task_model.json), or None for a
    folder without one (a base model, a checkpoint saved before training).

    The one reader of it (evaluation, transfer provenance), so a corrupt record is a one-line
    error naming the rule, not an AttributeError in whichever step read it first.
    """
    path = Path(folder) / TASK_MODEL_FILE
    if not path.is_file():
        return None
    what, rule = "checkpoint record", checkpoint_rule(folder)
    training = _json_object(what, path, rule).get("training")
    if training is not None and not isinstance(training, dict):
        raise _error(
            what, path, f"has a 'training' entry that is a JSON {type(training).__name__}", rule
        )
    return training or None


def read_model_provenance(folder: str | Path) -> dict[str, Any] | None:
    """The `provenance.json` that prepare_model writes into a model folder, or None without one."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    return _json_object("model record", path, checkpoint_rule(folder))


def recorded_base_model(folder: str | Path) -> str | None:
    """sha256 of the prepared base model `folder` descends from, as its records say: a
    checkpoint's training record (carried through every fine-tuning), else a prepared model's
    `converted_sha256`; None when the folder does not say."""
    if (Path(folder) / TASK_MODEL_FILE).is_file():  # a checkpoint: never its base's provenance
        return (read_training_record(folder) or {}).get("base_model_sha256")
    prov = read_model_provenance(folder)
    return prov.get("converted_sha256") if prov else None
