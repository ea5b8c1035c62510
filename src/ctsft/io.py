"""Atomic file writes, so a killed job never leaves an artifact that looks finished.

What is written gets the permissions an ordinary `open()` would give under the process umask
(0666 & ~umask for files, 0777 & ~umask for folders), whatever the writer (safetensors writes
0600 files of its own): on a shared cluster a group can read a colleague's results.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctsft.errors import CtsftError


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path) -> None:
    """chmod `path` (and everything under it) to the umask-derived default modes."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), dir_mode)
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, file_mode)
        os.chmod(path, dir_mode)
    elif path.is_file():
        os.chmod(path, file_mode)


def _stale_temporaries(final: Path) -> list[Path]:
    """Temporaries of earlier writes of `final` that were killed before they could clean up."""
    return list(final.parent.glob(f".{final.name}.*.tmp"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Works for files and for directories (a directory target is replaced as a whole). If the
    block fails (or is interrupted), the temporary is removed and `path` is left as it was;
    temporaries left by a killed earlier write of the same `path` are removed first.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_temporaries(final):
        _remove(stale)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        _honour_umask(tmp)
        if final.is_dir() and tmp.is_dir():
            _remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON atomically (the JSON is built before anything is written)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file; a one-line `CtsftError` naming the file when it is missing or not JSON."""
    file = Path(path)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CtsftError(f"{file} does not exist: rerun the step that writes it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise CtsftError(
            f"{file} is not valid JSON ({reason}): delete it and rerun the step that writes it"
        ) from None
