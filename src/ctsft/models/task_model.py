"""A model with a task head: an encoder + classifier, or a causal LM reading label tokens.

Both kinds return class logits `[batch, n_labels]` from the same `forward`, so training,
evaluation and circuit discovery never branch on the model family.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from ctsft.adapters import ArchAdapter, get_adapter
from ctsft.artifacts import check_checkpoint, checkpoint_rule
from ctsft.data.tasks import TaskSpec, get_task
from ctsft.errors import CtsftError
from ctsft.facts import TASK_MODEL_FILE
from ctsft.io import atomic_path
from ctsft.models.checkpoint import FULL, StoredWeights, apply_stored, resolve_base, stored_record
from ctsft.runtime import CPU, Runtime

log = logging.getLogger(__name__)


def label_token_ids(tokenizer: Any, label_words: tuple[str, ...]) -> list[int]:
    """One token id per label word; a clear error if a word splits into several tokens."""
    ids: list[int] = []
    for word in label_words:
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) != 1:
            raise CtsftError(
                f"label word {word!r} is {len(pieces)} tokens for this tokenizer: choose single-token "
                "label words in the task config (task.label_words)"
            )
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise CtsftError(f"label words {label_words} map to the same token: choose distinct words")
    return ids


def class_logits(
    hf_model: nn.Module,
    kind: str,
    label_ids: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    **_: Any,
) -> torch.Tensor:
    """Class logits `[batch, n_labels]` of a Hugging Face model read out as `kind`: the
    classifier's logits (encoder), or the LM logits of the label tokens `label_ids` at the last
    real token (causal). The one read-out: `TaskModel.forward` and the attribution scores (which
    may hold only the bare model of a `CDTEngine`) both call it."""
    if kind == "encoder":
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return hf_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    hidden = hf_model.base_model(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state
    last = TaskModel.readout_positions(attention_mask, "causal")
    rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return hf_model.lm_head(rows)[:, label_ids]


class TaskModel(nn.Module):
    """Wraps a Hugging Face model; `forward(**batch)` gives class logits `[batch, n_labels]`."""

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer: Any,
        task: TaskSpec,
        kind: str,
        max_length: int = 128,
        runtime: Runtime = CPU,
    ) -> None:
        super().__init__()
        self.hf = hf_model
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.task = task
        self.kind = kind
        self.max_length = max_length
        self.adapter: ArchAdapter = get_adapter(hf_model)
        self.fresh_parameters: tuple[str, ...] = ()  # set by load_task_model
        if kind == "causal":
            self.label_ids = label_token_ids(tokenizer, task.label_words)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
        else:
            self.label_ids = []
        tokenizer.padding_side = "right"

    # -- inputs ----------------------------------------------------------------------------
    def format(self, example: dict[str, Any]) -> tuple[str, ...]:
        """The text(s) fed to the tokenizer: the raw fields (encoder) or the filled prompt (causal)."""
        if self.kind == "causal":
            return (self.task.prompt.format(**{f: example[f] for f in self.task.text_fields}),)
        return tuple(example[f] for f in self.task.text_fields)

    def encode(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Tokenize and right-pad a list of examples into a batch (with `labels` if present)."""
        texts = [self.format(ex) for ex in examples]
        columns = list(zip(*texts, strict=True))
        if self.kind == "causal":
            # keep the end of the prompt (where the answer is read) when truncating
            self.tokenizer.truncation_side = "left"
        batch = self.tokenizer(
            *columns,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = {
            k: v.to(self.device)
            for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        if all("label" in ex for ex in examples):
            out["labels"] = torch.tensor([int(ex["label"]) for ex in examples], device=self.device)
        return out

    @property
    def device(self) -> torch.device:
        """Where the model's weights are: every batch `encode` makes goes there."""
        return next(self.hf.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The runtime's mixed-precision context for forward passes (training, evaluation)."""
        return self.runtime.autocast()

    # -- outputs ---------------------------------------------------------------------------
    @staticmethod
    def readout_positions(attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
        """Where the class is read: position 0 (encoder) or the last real token (causal, right-padded)."""
        if kind == "causal":
            return attention_mask.sum(dim=1) - 1
        return torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        return class_logits(
            self.hf, self.kind, self.label_ids, input_ids, attention_mask, token_type_ids
        )

    # -- persistence -----------------------------------------------------------------------
    def save(
        self,
        out_dir: str | Path,
        extra: dict[str, Any] | None = None,
        stored: StoredWeights | None = None,
    ) -> None:
        """Write a checkpoint folder atomically: the whole model (safetensors + tokenizer + head),
        or, given `stored`, only what was trained, relative to its base (`ctsft.models.checkpoint`)."""
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            meta: dict[str, Any] = {
                "kind": self.kind,
                "task": self.task.name,
                "label_words": list(self.task.label_words),
                "prompt": self.task.prompt,
                "max_length": self.max_length,
            }
            if stored is None:
                self.hf.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
                meta["format"] = FULL
            else:
                meta.update(stored.write(self.hf, tmp, Path(out_dir)))
            meta.update(extra or {})
            (tmp / TASK_MODEL_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_tokenizer(folder: Path) -> Any:
    """The folder's `tokenizer.json` as is (AutoTokenizer may rebuild one from the model type)."""
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def load_task_model(
    model_dir: str | Path,
    task: str | TaskSpec,
    kind: str | None = None,
    max_length: int = 128,
    seed: int = 0,
    runtime: Runtime = CPU,
    model_name: str | None = None,
) -> TaskModel:
    """Load a prepared base model or a trained checkpoint folder as a `TaskModel` on
    `runtime.device` (fp32 master weights whatever the autocast precision).

    A fresh classifier head (encoder) is initialised with `seed` on the CPU before the move, so the
    same seed gives the same starting point on every device. The folder is checked first
    (`ctsft.artifacts.check_checkpoint`): a truncated or corrupt one, or one of another task, kind
    or (given `model_name`) model, is a one-line error naming the rule to force.
    """
    started = time.monotonic()
    attn_implementation = runtime.attention
    folder = Path(model_dir)
    spec = get_task(task) if isinstance(task, str) else task
    kind = check_checkpoint(folder, spec.name, kind, model_name)  # one line per broken folder
    record = stored_record(folder)  # None: the folder holds the whole model
    source = folder
    if record is not None:  # only what was trained: load its base first, checked the same way
        source = resolve_base(folder, record["base"], checkpoint_rule(folder))
        check_checkpoint(source, spec.name, kind, model_name)
    torch.manual_seed(seed)
    try:
        if kind == "encoder":
            hf, info = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=len(spec.label_names),
                attn_implementation=attn_implementation,
                output_loading_info=True,
            )
        else:
            hf, info = AutoModelForCausalLM.from_pretrained(
                source,
                attn_implementation=attn_implementation,
                dtype=torch.float32,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise CtsftError(
            f"cannot load model from {source} ({type(err).__name__}): re-create it"
        ) from err
    if record is not None:
        apply_stored(hf, folder, str(record["format"]), checkpoint_rule(folder))
    tokenizer = load_tokenizer(source)
    hf.to(runtime.device)
    log.info("loaded %s (%s) in %.1f s", folder, kind, time.monotonic() - started)
    model = TaskModel(hf, tokenizer, spec, kind, max_length=max_length, runtime=runtime)
    names = {name for name, _ in hf.named_parameters()}
    # initialised from `seed`, not read from the folder (a base model's new classifier head):
    # a checkpoint relative to this folder must store them even where its method froze them
    model.fresh_parameters = () if record else tuple(sorted(names & set(info["missing_keys"])))
    return model
