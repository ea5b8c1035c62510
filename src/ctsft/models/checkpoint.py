"""Checkpoints that hold what their method trained, and nothing else.

A transfer changes a fraction of theta_1: CT-SFT 0.31% of e5-small, full fine-tuning with frozen
token embeddings 18%. Writing the whole model for each (today's `save_pretrained`) made the
paper grid with Qwen2.5-0.5B about 1.4 TB, 0.3% of every file being the result. So a checkpoint
trained from a full model folder (its *base*) stores, beside its `task_model.json` record:

- format `trained`: `trained.safetensors` with the values its plan trained (whole tensors such
  as norms, the merged row / column spans of the chosen heads, the entries a `sparse_random`
  plan drew, with their flat int32/int64 indices) and the index of each in the file's metadata;
- format `lora`: a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`), which
  `peft.PeftModel.from_pretrained(theta_1, folder)` loads as every PEFT user expects;
- format `full`: the whole model (`save_pretrained`), for a plan that trains every parameter and
  for theta_1 itself, the root every transfer references.

The record names the base by a path relative to the checkpoint (a moved results folder keeps
working) and by the sha256 of its weights. `apply_stored` writes the stored values into the
loaded base in place (index-copy semantics, the same as `MaskedModel.merge`): the result is
bit-identical to the full checkpoint the same run would have written, and a base whose sha256 no
longer matches (theta_1 was re-created) is refused in one line naming the rule to rerun.

The writer and the one reader of each format live here; `ctsft.models.task_model` calls them, so
evaluation, faithfulness and mechanism load any checkpoint without knowing its format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ctsft.artifacts import forcerun
from ctsft.errors import CtsftError
from ctsft.facts import ADAPTER_FILE, TASK_MODEL_FILE, TRAINED_FILE, WEIGHTS_FILE
from ctsft.provenance import sha256_file

#: `format` of a checkpoint record: which files hold its weights.
FULL, TRAINED, LORA = "full", "trained", "lora"
FORMAT_FILES = {FULL: WEIGHTS_FILE, TRAINED: TRAINED_FILE, LORA: ADAPTER_FILE}
_INDEX_KEY = "ctsft_index"  # safetensors metadata: the JSON list of what each tensor is
_PEFT_PREFIX = "base_model.model."  # PeftModel.save_pretrained's key prefix

Span = tuple[str, "int | None", int, int]  # parameter name, dim (None: whole), start, stop


def weights_file(folder: str | Path, fmt: str) -> Path:
    """The file that holds a checkpoint's own weights (what its sha256 is taken of)."""
    return Path(folder) / FORMAT_FILES[fmt]


def own_weights(folder: str | Path) -> Path:
    """The file holding a checkpoint folder's own weights (model, trained values or adapter):
    what a record's `checkpoint_sha256` is taken of."""
    record = stored_record(folder)
    return weights_file(folder, str(record["format"]) if record else FULL)


def base_reference(
    base_dir: str | Path, folder: str | Path, sha256: str | None = None
) -> dict[str, Any]:
    """The record's `base`: `base_dir` relative to `folder`, the sha256 of its weights (hashed
    unless the caller has it), and their size and mtime (a quick check: an unchanged file is not
    hashed again at every load)."""
    weights = Path(base_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise CtsftError(
            f"cannot store a checkpoint relative to {base_dir}: it has no {WEIGHTS_FILE} (only a "
            "full model folder can be a base)"
        )
    stat = weights.stat()
    return {
        "path": os.path.relpath(Path(base_dir).resolve(), Path(folder).resolve()),
        "sha256": sha256 or sha256_file(weights),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def resolve_base(folder: str | Path, base: dict[str, Any], rule: str) -> Path:
    """The base folder a stored checkpoint names, checked: present and with the same sha256.

    Like git's index, a weights file whose size and mtime are those recorded is taken as
    unchanged (re-creating theta_1 always gives a new mtime); any other is hashed again (0.3 s
    for e5-small's 470 MB, 1.2 s for Qwen2.5-0.5B's 2 GB)."""
    path = (Path(folder).resolve() / str(base["path"])).resolve()
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CtsftError(
            f"checkpoint {folder} is stored relative to {path}, which has no {WEIGHTS_FILE}: "
            f"re-create theta_1, then {forcerun(rule)}"
        )
    stat = weights.stat()
    if (stat.st_size, stat.st_mtime_ns) == (base.get("size"), base.get("mtime_ns")):
        return path
    found = sha256_file(weights)
    if found != base.get("sha256"):
        raise CtsftError(
            f"checkpoint {folder} was trained from {path} with sha256 {str(base.get('sha256'))[:12]}, "
            f"which is now {found[:12]} (theta_1 was re-created): {forcerun(rule)}"
        )
    return path


# -- format `trained` -------------------------------------------------------------------------
def save_trained(
    hf_model: nn.Module,
    spans: Iterable[Span],
    scatter: Iterable[tuple[str, np.ndarray]],
    folder: Path,
) -> None:
    """Write the trained values of `hf_model` (after its deltas were merged) to `folder`."""
    params = dict(hf_model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    index: list[list[Any]] = []
    for i, (name, dim, start, stop) in enumerate(spans):
        value = params[name].detach()
        if dim is not None:
            value = value.narrow(dim, start, stop - start)
        key = f"s{i}"
        tensors[key] = value.to("cpu", copy=True).contiguous()
        index.append([key, name, dim, start, stop])
    for i, (name, flat) in enumerate(scatter):
        key = f"e{i}"
        numel = params[name].numel()
        dtype = np.int32 if numel <= np.iinfo(np.int32).max else np.int64
        positions = torch.from_numpy(np.ascontiguousarray(flat, dtype=dtype))
        tensors[key] = params[name].detach().reshape(-1)[positions.long()].to("cpu", copy=True)
        tensors[key + ".idx"] = positions
        index.append([key, name, "entries", 0, 0])
    save_file(tensors, str(folder / TRAINED_FILE), metadata={_INDEX_KEY: json.dumps(index)})


def apply_trained(hf_model: nn.Module, folder: Path, rule: str) -> None:
    """Write the values of `folder`'s trained.safetensors into `hf_model` in place."""
    path = folder / TRAINED_FILE
    params = dict(hf_model.named_parameters())
    try:
        with safe_open(str(path), framework="pt") as handle, torch.no_grad():
            index = json.loads((handle.metadata() or {}).get(_INDEX_KEY, "null"))
            if not isinstance(index, list):
                raise CtsftError(f"{path} has no index of its tensors: {forcerun(rule)}")
            for key, name, dim, start, stop in index:
                if name not in params:
                    raise CtsftError(
                        f"{path} holds {name}, which this model does not have (a checkpoint of "
                        f"another model?): {forcerun(rule)}"
                    )
                param = params[name]
                value = handle.get_tensor(key)
                if dim == "entries":
                    positions = handle.get_tensor(key + ".idx").long()
                    param.view(-1).index_copy_(
                        0, positions.to(param.device), value.to(param.device)
                    )
                    continue
                target = param if dim is None else param.narrow(dim, start, stop - start)
                if target.shape != value.shape:
                    raise CtsftError(
                        f"{path}: {name} stored as {tuple(value.shape)}, the model has "
                        f"{tuple(target.shape)}: {forcerun(rule)}"
                    )
                target.copy_(value)
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as err:
        raise CtsftError(f"{path} is truncated or corrupt ({err}): {forcerun(rule)}") from err


# -- format `lora` ----------------------------------------------------------------------------
def save_adapter(hf_model: nn.Module, config: Any, folder: Path) -> None:
    """The injected LoRA of `hf_model` as a PEFT adapter folder (PeftModel.save_pretrained's keys)."""
    from peft import get_peft_model_state_dict  # deferred: peft is only needed for LoRA

    state = {
        _PEFT_PREFIX + key: value.detach().to("cpu", copy=True).contiguous()
        for key, value in get_peft_model_state_dict(hf_model).items()
    }
    save_file(state, str(folder / ADAPTER_FILE), metadata={"format": "pt"})
    config.save_pretrained(str(folder))


def apply_adapter(hf_model: nn.Module, folder: Path, rule: str) -> None:
    """Inject `folder`'s PEFT adapter into `hf_model`, load its weights and merge them."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        config = LoraConfig.from_pretrained(str(folder))
        state = load_file(str(folder / ADAPTER_FILE))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise CtsftError(
            f"adapter in {folder} is truncated or corrupt ({type(err).__name__}): {forcerun(rule)}"
        ) from err
    inject_adapter_in_model(config, hf_model)
    stripped = {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    result = set_peft_model_state_dict(hf_model, stripped)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise CtsftError(
            f"adapter in {folder} does not fit this model ({len(missing)} LoRA weights missing, "
            f"{len(result.unexpected_keys)} unexpected): {forcerun(rule)}"
        )
    merge_lora(hf_model)


def merge_lora(hf_model: nn.Module) -> None:
    """Fold every LoRA update into its base weight and put the plain `nn.Linear` back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(hf_model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = hf_model.get_submodule(parent_name) if parent_name else hf_model
            setattr(parent, attr, module.get_base_layer())


@dataclass(frozen=True)
class StoredWeights:
    """What a checkpoint stores instead of the whole model, and the base it is relative to:
    `spans` and `scatter` (format `trained`) or `lora_config` (format `lora`)."""

    base_dir: Path
    base_sha256: str | None = None  # of base_dir's weights, when the caller hashed them already
    spans: list[Span] = field(default_factory=list)
    scatter: list[tuple[str, np.ndarray]] = field(default_factory=list)
    lora_config: Any = None

    @property
    def format(self) -> str:
        return LORA if self.lora_config is not None else TRAINED

    def write(self, hf_model: nn.Module, tmp: Path, final: Path) -> dict[str, Any]:
        """Write the weights into `tmp` (becoming `final`); returns the record's entries."""
        if self.lora_config is not None:
            save_adapter(hf_model, self.lora_config, tmp)
        else:
            save_trained(hf_model, self.spans, self.scatter, tmp)
        base = base_reference(self.base_dir, final, self.base_sha256)
        return {"format": self.format, "base": base}


def stored_record(folder: str | Path) -> dict[str, Any] | None:
    """The record of a checkpoint stored relative to a base (`format` and `base`), or None for a
    folder that holds the whole model. `ctsft.artifacts.check_checkpoint` validated it before."""
    path = Path(folder)
    meta = path / TASK_MODEL_FILE
    if (path / "config.json").is_file() or not meta.is_file():
        return None
    record = json.loads(meta.read_text(encoding="utf-8"))
    return record if record.get("format") in (TRAINED, LORA) else None


def apply_stored(hf_model: nn.Module, folder: Path, fmt: str, rule: str) -> None:
    """Write a `trained` or `lora` checkpoint's weights into its loaded base."""
    if fmt == TRAINED:
        apply_trained(hf_model, folder, rule)
    elif fmt == LORA:
        apply_adapter(hf_model, folder, rule)
    else:
        raise CtsftError(f"checkpoint {folder} has format {fmt!r}: {forcerun(rule)}")
