"""Any checkpoint (whole, trained values only, or a LoRA adapter) as a standalone Hugging Face folder.

    python -m ctsft.export <checkpoint> <out> [--dry-run]

The workflow's transfers store only what they trained, relative to theta_1
(`ctsft.models.checkpoint`). To share one, or to load it where ctsft is not installed, export it:
`<out>` is an ordinary model folder (`AutoModelForSequenceClassification.from_pretrained(out)` for
an encoder, with the task's label names in its config; `AutoModelForCausalLM.from_pretrained(out)`
for a causal LM, whose classes are the label words of `ctsft_export.json`), plus
`ctsft_export.json`: where it came from (path and sha256 of the checkpoint and of its base) and
what its method trained. A one-line summary of the latter is printed, e.g.

    ctsft: 7 heads (L3H1 L7H5 ...), 25 norm tensors, 366,912 of 117,654,531 parameters (0.31%)

`--dry-run` loads and checks the checkpoint and prints the summary and the files it would write,
writing nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ctsft.artifacts import read_training_record
from ctsft.errors import CtsftError
from ctsft.facts import TASK_MODEL_FILE
from ctsft.io import atomic_path
from ctsft.models.checkpoint import own_weights, stored_record
from ctsft.models.task_model import load_task_model
from ctsft.provenance import git_commit, sha256_file

EXPORT_RECORD = "ctsft_export.json"


def summary(training: dict[str, Any]) -> str:
    """What a training record says was trained, in one line."""
    parts = []
    if heads := training.get("heads"):
        names = " ".join(f"L{layer}H{head}" for layer, head in heads)
        parts.append(f"{len(heads)} heads ({names})")
    entries = training.get("entries") or []
    whole = sum(1 for _, dim, *_ in entries if dim is None)
    if whole:
        kind = "norm tensors" if heads or training.get("scatter") else "whole tensors"
        parts.append(f"{whole} {kind}")
    if scatter := training.get("scatter"):
        parts.append(f"{scatter['count']:,} scattered q/k/v/o entries")
    if rank := training.get("lora_rank"):
        parts.append(f"LoRA rank {rank}")
    trainable, total = int(training.get("trainable", 0)), int(training.get("total", 0))
    pct = 100.0 * trainable / total if total else 0.0
    parts.append(f"{trainable:,} of {total:,} parameters ({pct:.2f}%)")
    return f"{training.get('method', '?')}: " + ", ".join(parts)


def export(checkpoint: str | Path, out: str | Path, dry_run: bool = False) -> dict[str, Any]:
    """Write `checkpoint` as a standalone model folder `out`; returns its export record."""
    folder, out = Path(checkpoint), Path(out)
    if not (folder / TASK_MODEL_FILE).is_file():
        raise CtsftError(
            f"{folder} has no {TASK_MODEL_FILE}: not a ctsft checkpoint (a base model folder is "
            "already a Hugging Face folder)"
        )
    if out.exists() and not dry_run:
        raise CtsftError(f"{out} exists: choose another output folder or remove it first")
    meta = json.loads((folder / TASK_MODEL_FILE).read_text(encoding="utf-8"))
    model = load_task_model(folder, str(meta["task"]), kind=str(meta["kind"]))
    training = read_training_record(folder) or {}
    stored = stored_record(folder)
    record = {
        "checkpoint": str(folder),
        "format": stored["format"] if stored else "full",
        "checkpoint_sha256": sha256_file(own_weights(folder)),
        "base": stored["base"] if stored else None,
        "task": model.task.name,
        "kind": model.kind,
        "label_names": list(model.task.label_names),
        "label_words": list(model.task.label_words),
        "prompt": model.task.prompt if model.kind == "causal" else None,
        "trained": summary(training),
        "training": {
            k: training.get(k)
            for k in ("method", "trainable", "total", "percent", "heads", "lora_rank", "seed")
        },  # fmt: skip
        "git_commit": git_commit(),
    }
    print(record["trained"], flush=True)
    if dry_run:
        print(f"would write {out}/ (config.json, model.safetensors, tokenizer, {EXPORT_RECORD})")
        return record
    if model.kind == "encoder":
        names = model.task.label_names
        model.hf.config.id2label = dict(enumerate(names))
        model.hf.config.label2id = {name: i for i, name in enumerate(names)}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        model.hf.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {out}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctsft.export",
        description="Export a ctsft checkpoint (whole, trained values or LoRA) as a standalone "
        "Hugging Face model folder.",
    )
    parser.add_argument(
        "checkpoint", help="a checkpoint folder of the workflow (transfer or theta_1)"
    )
    parser.add_argument("out", help="the folder to write (must not exist)")
    parser.add_argument("--dry-run", action="store_true", help="check and summarise, write nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        export(args.checkpoint, args.out, dry_run=args.dry_run)
    except CtsftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
