"""Read NusaX-Senti and XNLI from a local folder into `datasets.Dataset` with one schema per task.

Schema: `id` (str), the task's text fields (str), `label` (ClassLabel), `language`, `split`.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from functools import lru_cache
from pathlib import Path

import datasets

from ctsft.data.tasks import DATA_ROOT_ENV, XNLI_VALID_EVERY, TaskSpec, get_task
from ctsft.errors import CtsftError
from ctsft.provenance import REPO_ROOT, sha256_file


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


#: The header of each task's raw files (any order; nothing missing, nothing extra).
COLUMNS = {
    "nusax": ("id", "text", "label"),
    "xnli": ("language", "gold_label", "sentence1", "sentence2", "genre", "idx"),
}
_RESTORE = "restore the original file (data.root or $" + DATA_ROOT_ENV + ")"


def _bad(path: Path, problem: str, todo: str = _RESTORE) -> CtsftError:
    """The one-line error for a malformed data file: the file, what is wrong, what to do."""
    return CtsftError(f"data file {path} {problem}: {todo}")


def _read_table(path: Path, task: TaskSpec) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a NusaX csv or XNLI tsv.gz, every row checked for shape.

    Undecodable bytes, a truncated gzip, an empty file, a header that is not exactly the task's
    columns, and a row with the wrong number of fields are one-line `CtsftError`s.
    """
    expected = COLUMNS[task.name]
    gz = path.name.endswith(".gz")
    rows: list[tuple[int, dict[str, str]]] = []
    line = 0
    try:
        handle = (
            gzip.open(path, "rt", encoding="utf-8", newline="")
            if gz
            else open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        )
        with handle:
            if gz:
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise _bad(path, "is empty (no header row)")
            if sorted(header) != sorted(expected):
                missing = sorted(set(expected) - set(header))
                extra = sorted(set(header) - set(expected))
                detail = "; ".join(
                    part
                    for part in (
                        f"missing column(s) {', '.join(missing)}" if missing else "",
                        f"unexpected column(s) {', '.join(extra)}" if extra else "",
                        "repeated columns" if not missing and not extra else "",
                    )
                    if part
                )
                raise _bad(
                    path,
                    f"has header {','.join(header)!r} ({detail}; expected {','.join(expected)})",
                )
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise _bad(
                        path,
                        f"line {line} has {len(fields)} fields, the header has {len(header)}",
                        "fix the quoting of that row (a stray separator or quote) or " + _RESTORE,
                    )
                rows.append((line, dict(zip(header, fields, strict=True))))
    except UnicodeDecodeError as err:
        where = f" near line {line + 1}" if line else ""
        raise _bad(
            path,
            f"is not UTF-8 text (byte 0x{err.object[err.start]:02x}{where})",
            "convert it to UTF-8 or " + _RESTORE,
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise _bad(path, f"is truncated or not a valid gzip file ({err})") from None
    except csv.Error as err:
        raise _bad(
            path, f"is not a valid {'TSV' if gz else 'CSV'} file (line {line}: {err})"
        ) from None
    except PermissionError:
        raise _bad(path, "cannot be read (permission denied)", "check its permissions") from None
    return rows


def _label_id(task: TaskSpec, label: str, where: Path, line: int | None = None) -> int:
    try:
        return task.label_names.index(label)
    except ValueError:
        at = f" at line {line}" if line else ""
        raise CtsftError(
            f"unexpected label {label!r}{at} in {where}: expected one of "
            f"{', '.join(task.label_names)}; fix that row or " + _RESTORE
        ) from None


def _check_text(path: Path, line: int, field: str, value: str) -> str:
    if not value.strip():
        raise _bad(path, f"line {line} has an empty {field}", "fill it in or remove that row")
    return value


def _check_unique(path: Path, seen: dict[str, int], key: str, line: int, what: str) -> None:
    if not key.strip():
        raise _bad(path, f"line {line} has an empty {what}", "fill it in or remove that row")
    if key in seen:
        raise _bad(
            path,
            f"repeats {what} {key!r} (lines {seen[key]} and {line})",
            "remove the duplicate row or " + _RESTORE,
        )
    seen[key] = line


def _read_nusax(task: TaskSpec, lang: str, role: str, path: Path) -> dict[str, list]:
    rows: dict[str, list] = {"id": [], "text": [], "label": []}
    seen: dict[str, int] = {}
    for line, record in _read_table(path, task):
        _check_unique(path, seen, record["id"], line, "id")
        rows["id"].append(record["id"])
        rows["text"].append(_check_text(path, line, "text", record["text"]))
        rows["label"].append(_label_id(task, record["label"], path, line))
    return rows


def _xnli_table(task: TaskSpec, path: Path) -> dict[str, list[tuple[int, dict[str, str]]]]:
    """All rows of one XNLI file by language (the file holds all 15), checked once per version."""
    stat = path.stat()
    return _xnli_table_cached(task.name, path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _xnli_table_cached(
    task_name: str, path: Path, _mtime: int, _size: int
) -> dict[str, list[tuple[int, dict[str, str]]]]:
    task = get_task(task_name)
    by_lang: dict[str, list[tuple[int, dict[str, str]]]] = {}
    seen: dict[str, dict[str, int]] = {}
    for line, record in _read_table(path, task):
        lang = record["language"]
        idx = record["idx"]
        _check_unique(path, seen.setdefault(lang, {}), idx, line, f"idx of language {lang!r}")
        if not idx.strip().isdigit():
            raise _bad(path, f"line {line} has idx {idx!r}, not a whole number")
        for field in ("sentence1", "sentence2"):
            _check_text(path, line, field, record[field])
        _label_id(task, record["gold_label"], path, line)
        by_lang.setdefault(lang, []).append((line, record))
    _check_parallel(path, {lang: set(ids) for lang, ids in seen.items()})
    return by_lang


def _check_parallel(path: Path, ids: dict[str, set[str]]) -> None:
    """Every language holds the same example indices: train/valid are cut by parallel index,
    so a language with other indices would get another split (and other examples)."""
    if len(ids) < 2:
        return
    sets = [frozenset(s) for s in ids.values()]
    common = max(set(sets), key=sets.count)
    for lang, have in ids.items():
        if have != common:
            missing = sorted(common - have, key=int)
            extra = sorted(have - common, key=int)
            detail = ", ".join(
                part
                for part in (
                    f"{len(missing)} missing (e.g. idx {missing[0]})" if missing else "",
                    f"{len(extra)} not in the other languages (e.g. idx {extra[0]})"
                    if extra
                    else "",
                )
                if part
            )
            raise _bad(
                path,
                f"is not parallel across languages: language {lang!r} has other example "
                f"indices than the rest ({detail}); the train/valid split relies on them",
            )


def _read_xnli(task: TaskSpec, lang: str, role: str, path: Path) -> dict[str, list]:
    rows: dict[str, list] = {"id": [], "premise": [], "hypothesis": [], "label": []}
    for line, record in _xnli_table(task, path).get(lang, []):
        index = int(record["idx"])
        if role in ("train", "valid"):
            in_valid = index % XNLI_VALID_EVERY == 0
            if in_valid != (role == "valid"):
                continue
        rows["id"].append(str(index))
        rows["premise"].append(record["sentence1"])
        rows["hypothesis"].append(record["sentence2"])
        rows["label"].append(_label_id(task, record["gold_label"], path, line))
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
        raise _bad(path, f"is empty: split {split!r} of {spec.name}/{lang} has no rows")
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
