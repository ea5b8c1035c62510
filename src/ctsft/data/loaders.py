"""Read NusaX-Senti and XNLI from a local folder into `datasets.Dataset` with one schema per task.

Schema: `id` (str), the task's text fields (str), `label` (ClassLabel), `language`, `split`.
"""

from __future__ import annotations

import csv
import gzip
import os
from functools import lru_cache
from pathlib import Path

import datasets

from ctsft.data.tasks import XNLI_VALID_EVERY, TaskSpec, get_task
from ctsft.errors import CtsftError
from ctsft.provenance import REPO_ROOT, sha256_file

DATA_ROOT_ENV = "CTSFT_DATA_ROOT"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: explicit argument, else $CTSFT_DATA_ROOT, else ../shared/data of the repo."""
    chosen = root or os.environ.get(DATA_ROOT_ENV) or REPO_ROOT.parent / "shared" / "data"
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise CtsftError(
            f"data folder {path} does not exist: set data.root in the config or ${DATA_ROOT_ENV}"
        )
    return path


def source_files(task: TaskSpec, lang: str, role: str, root: Path) -> list[Path]:
    """The raw files a (task, language, role) is read from."""
    if task.name == "nusax":
        return [root / "nusax" / lang / f"{task.roles[role]}.csv"]
    return [root / "xnli" / f"xnli.{task.roles[role]}.tsv.gz"]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise CtsftError(f"missing data file {path}: check data.root (or ${DATA_ROOT_ENV})")
    return path


def _features(task: TaskSpec) -> datasets.Features:
    columns = {"id": datasets.Value("string")}
    columns.update({field: datasets.Value("string") for field in task.text_fields})
    columns["label"] = datasets.ClassLabel(names=list(task.label_names))
    columns["language"] = datasets.Value("string")
    columns["split"] = datasets.Value("string")
    return datasets.Features(columns)


def _label_id(task: TaskSpec, label: str, where: Path) -> int:
    try:
        return task.label_names.index(label)
    except ValueError:
        raise CtsftError(
            f"unexpected label {label!r} in {where}: expected one of {', '.join(task.label_names)}"
        ) from None


def _read_nusax(task: TaskSpec, lang: str, role: str, path: Path) -> dict[str, list]:
    rows: dict[str, list] = {"id": [], "text": [], "label": []}
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            rows["id"].append(str(record["id"]))
            rows["text"].append(record["text"])
            rows["label"].append(_label_id(task, record["label"], path))
    return rows


@lru_cache(maxsize=4)
def _xnli_table(path: Path) -> dict[str, list[dict[str, str]]]:
    """All rows of one XNLI file, grouped by language (the file holds all 15)."""
    by_lang: dict[str, list[dict[str, str]]] = {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            by_lang.setdefault(record["language"], []).append(record)
    return by_lang


def _read_xnli(task: TaskSpec, lang: str, role: str, path: Path) -> dict[str, list]:
    rows: dict[str, list] = {"id": [], "premise": [], "hypothesis": [], "label": []}
    for record in _xnli_table(path).get(lang, []):
        index = int(record["idx"])
        if role in ("train", "valid"):
            in_valid = index % XNLI_VALID_EVERY == 0
            if in_valid != (role == "valid"):
                continue
        rows["id"].append(str(index))
        rows["premise"].append(record["sentence1"])
        rows["hypothesis"].append(record["sentence2"])
        rows["label"].append(_label_id(task, record["gold_label"], path))
    return rows


def load_split(
    task: str | TaskSpec, lang: str, split: str, root: str | os.PathLike[str] | None = None
) -> datasets.Dataset:
    """Load one (task, language, split) from the local copy.

    `split` is a role: train, valid or test (see `TaskSpec.roles` for what XNLI maps them to).
    """
    spec = get_task(task) if isinstance(task, str) else task
    spec.check_language(lang)
    spec.check_role(split)
    base = data_root(root)
    (path,) = (_require(p) for p in source_files(spec, lang, split, base))
    reader = _read_nusax if spec.name == "nusax" else _read_xnli
    rows = reader(spec, lang, split, path)
    if not rows["id"]:
        raise CtsftError(f"split {split!r} of {spec.name}/{lang} in {path} is empty")
    rows["language"] = [lang] * len(rows["id"])
    rows["split"] = [split] * len(rows["id"])
    return datasets.Dataset.from_dict(rows, features=_features(spec))


def load_hub_split(task: str | TaskSpec, lang: str, split: str) -> datasets.Dataset:
    """For users with internet: the same schema from the Hugging Face hub (never used in tests).

    NusaX comes from `indonlp/NusaX-senti` (config = language code), XNLI from `facebook/xnli`
    (config = language code; its `validation` split plays the role of our local dev file).
    """
    spec = get_task(task) if isinstance(task, str) else task
    spec.check_language(lang)
    spec.check_role(split)
    if spec.name == "nusax":
        hub_split = {"train": "train", "valid": "validation", "test": "test"}[split]
        raw = datasets.load_dataset("indonlp/NusaX-senti", lang, split=hub_split)
        rows = {"id": [str(i) for i in raw["id"]], "text": raw["text"], "label": raw["label"]}
    else:
        hub_split = {"train": "validation", "valid": "validation", "test": "test"}[split]
        raw = datasets.load_dataset("facebook/xnli", lang, split=hub_split)
        keep = [
            i
            for i in range(len(raw))
            if split == "test" or ((i % XNLI_VALID_EVERY == 0) == (split == "valid"))
        ]
        raw = raw.select(keep)
        rows = {
            "id": [str(i) for i in keep],
            "premise": raw["premise"],
            "hypothesis": raw["hypothesis"],
            "label": raw["label"],
        }
    rows["language"] = [lang] * len(rows["id"])
    rows["split"] = [split] * len(rows["id"])
    return datasets.Dataset.from_dict(rows, features=_features(spec))


def data_checksum(
    task: str | TaskSpec, langs: list[str], root: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """sha256 of every raw file the given languages are read from, for provenance records."""
    spec = get_task(task) if isinstance(task, str) else task
    base = data_root(root)
    sums: dict[str, str] = {}
    for lang in langs:
        spec.check_language(lang)
        for role in spec.roles:
            for path in source_files(spec, lang, role, base):
                key = str(path.relative_to(base))
                if key not in sums:
                    sums[key] = sha256_file(_require(path))
    return sums
