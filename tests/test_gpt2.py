"""GPT-2-specific checks (fused Conv1D q|k|v, learned positions, pre-LayerNorm, tied lm_head) on a
tiny random `GPT2LMHeadModel`.

The checks every family gets run on GPT-2 through the shared family list
(`ctsft.models.tiny.TINY_ARCHES`): CD-T exactness and options (test_cdt_engine, with the
documented xfail of the naive path for a source equal to mu), head outputs (test_adapters), head
masking and span deltas (test_train_masking), the sparse controls (test_sparse_controls), the
label-token read-out (test_task_model). What is left here is GPT-2's own: the Conv1D views and
slices, the tied unembedding, and the Conv1D layout of a head plan.
"""

from __future__ import annotations

import pytest
import torch
from test_cdt_engine import LABEL_IDS, make_batch, setup
from test_train_masking import CIRCUIT, _method, _region_masks

from ctsft.adapters import GPT2Adapter, get_adapter
from ctsft.cdt import CDTOptions
from ctsft.facts import MODEL_TYPES
from ctsft.models.tiny import tiny_model
from ctsft.train import build_plan


# -- adapter ---------------------------------------------------------------------------------------
def test_gpt2_is_a_registered_causal_family() -> None:
    model = tiny_model("gpt2")
    adapter = get_adapter(model)
    assert isinstance(adapter, GPT2Adapter) and "gpt2" in MODEL_TYPES["causal"]
    geo = adapter.geometry
    assert (geo.n_layers, geo.n_heads, geo.n_kv_heads, geo.d_head, geo.d_model) == (2, 4, 4, 8, 32)
    assert len(adapter.norm_parameters()) == 2 * 2 * 2 + 2  # ln_1, ln_2 per layer, ln_f; w + b
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as in GPT-2


def test_head_slices_tile_the_conv1d_weights() -> None:
    """Every head's slices, in Conv1D layout, reassemble c_attn (q | k | v columns + bias) and
    c_proj (rows) exactly, and each equals that head's rows / columns of the nn.Linear view."""
    adapter = get_adapter(tiny_model("gpt2"))
    geo = adapter.geometry
    names = dict(adapter.model.named_parameters())
    for layer in range(geo.n_layers):
        sa = adapter.model.transformer.h[layer].attn
        parts = adapter.layer(layer).attn
        pieces: dict[tuple[str, int], dict[int, torch.Tensor]] = {}
        for head in range(geo.n_heads):
            slices = adapter.head_slices(layer, head, "shared")
            assert all(names[s.name] is s.param for s in slices)
            for s in slices:
                pieces.setdefault((s.name, s.dim), {})[s.start] = s.view()
            h0, h1 = head * geo.d_head, (head + 1) * geo.d_head
            q, _qb, k, _kb, v, _vb, o = (s.view() for s in slices)
            assert torch.equal(q.t(), parts.q.weight[h0:h1])
            assert torch.equal(k.t(), parts.k.weight[h0:h1])
            assert torch.equal(v.t(), parts.v.weight[h0:h1])
            assert torch.equal(o.t(), parts.o.weight[:, h0:h1])
            frozen = adapter.head_slices(layer, head, "frozen")
            assert [(s.param, s.dim) for s in frozen] == [
                (sa.c_attn.weight, 1),
                (sa.c_attn.bias, 0),
                (sa.c_proj.weight, 0),
            ]
        prefix = f"transformer.h.{layer}.attn."
        whole = {
            (prefix + "c_attn.weight", 1): sa.c_attn.weight,
            (prefix + "c_attn.bias", 0): sa.c_attn.bias,
            (prefix + "c_proj.weight", 0): sa.c_proj.weight,
        }
        assert pieces.keys() == whole.keys()
        for (name, dim), param in whole.items():
            got = pieces[(name, dim)]
            assert len(got) == (3 if "c_attn" in name else 1) * geo.n_heads
            assert torch.equal(torch.cat([got[a] for a in sorted(got)], dim=dim), param), name


def test_views_track_the_parameters_without_copies() -> None:
    """The nn.Linear-shaped parts are views of the Conv1D storage: an in-place edit shows."""
    model = tiny_model("gpt2")
    parts = get_adapter(model).layer(1)
    c_attn = model.transformer.h[1].attn.c_attn
    assert parts.attn.k.weight.data_ptr() == c_attn.weight[:, 32:].data_ptr()
    with torch.no_grad():
        c_attn.weight[3, 40] = 7.0  # input 3 of k output 40 - 32 = 8
    assert parts.attn.k.weight[8, 3] == 7.0 and parts.attn.k.bias.shape == (32,)
    with pytest.raises(ValueError, match="partial Conv1D view"):
        parts.attn.q.register_forward_hook(lambda *_: None)


# -- label-token task head -------------------------------------------------------------------------
def test_engine_reads_the_label_tokens_at_the_last_real_token() -> None:
    """Causal read-out: ln_f, then the tied unembedding rows of the label tokens, at the last real
    position of each right-padded row (= GPT-2's own LM logits of the unpadded row)."""
    model, engine, _ = setup("gpt2", torch.float32, CDTOptions())
    batch = make_batch(6)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1
    assert torch.equal(engine.unembed_w, model.transformer.wte.weight.detach()[LABEL_IDS])
    logits = engine.clean(batch).logits
    with torch.no_grad():
        for row in range(len(lengths)):
            ids = batch["input_ids"][row, : lengths[row]].unsqueeze(0)
            full = model(input_ids=ids).logits[0, -1, LABEL_IDS]
            assert (logits[row] - full).abs().max() < 1e-5


# -- head-level training -----------------------------------------------------------------------
def test_head_plan_is_conv1d_spans() -> None:
    """A head plan on GPT-2, in Conv1D layout: each circuit head's q, k, v columns of `c_attn`
    with their bias entries, its o rows of `c_proj`, and the LayerNorms whole; nothing else (the
    counts are checked with the other families in test_train_masking)."""
    model = tiny_model("gpt2")
    plan = build_plan(model, get_adapter(model), _method("ctsft"), CIRCUIT)
    params = dict(model.named_parameters())
    want = {n: torch.full_like(p, ".ln_" in n, dtype=torch.bool) for n, p in params.items()}
    d_model, dh = 32, 8
    for layer, head in CIRCUIT["circuit"]:
        prefix = f"transformer.h.{layer}.attn."
        for part in range(3):  # q, k, v
            cols = slice(part * d_model + head * dh, part * d_model + (head + 1) * dh)
            want[prefix + "c_attn.weight"][:, cols] = True
            want[prefix + "c_attn.bias"][cols] = True
        want[prefix + "c_proj.weight"][head * dh : (head + 1) * dh] = True
    got = _region_masks(plan, params)
    assert all(torch.equal(got[n], want[n]) for n in params), [
        n for n in params if not torch.equal(got[n], want[n])
    ]
