"""Exactness of the CD-T engine on every tiny architecture (`TINY_ARCHES`, GPT-2 included).

beta + gamma must equal the ordinary forward (the HF model's own hidden states and logits) at
every layer output and at the logits; the fast (cached, stacked) path must equal the naive
two-stream path; a source equal to mu must leave beta exactly zero downstream.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctsft.cdt import CDTEngine, CDTOptions, rules
from ctsft.cdt.rules import NodeRules, add_node, node_rules
from ctsft.models.tiny import TINY_ARCHES, tiny_model

LABEL_IDS = [5, 6, 7]


def hf_reference(model, kind, batch):
    """Layer outputs [B, T, D] and class logits [B, C] from the HF model itself."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        if kind == "encoder":
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            return list(out.hidden_states[1:]), out.logits
        out = model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        last = mask.sum(1) - 1
        logits = model.lm_head(out.last_hidden_state[torch.arange(ids.shape[0]), last])[
            :, LABEL_IDS
        ]
        # the decoders' last hidden state is taken after the final norm: compare logits there
        return list(out.hidden_states[1:-1]), logits


def make_batch(seed: int = 0, n_pos: int = 21) -> dict[str, torch.Tensor]:
    """Three rows with right padding; longer than Gemma3's sliding window (16)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 900, (3, n_pos), generator=gen)
    mask = torch.ones(3, n_pos, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2])}


def setup(
    arch: str, dtype: torch.dtype, opts: CDTOptions
) -> tuple[torch.nn.Module, CDTEngine, str]:
    model = tiny_model(arch).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # HF initialises biases to 0 and norm weights to 1: make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or ".ln_" in name:  # GPT-2: ln_1
                param.add_(0.1 * torch.randn(param.shape, generator=gen, dtype=dtype))
    kind = "encoder" if arch == "bert" else "causal"
    return model, CDTEngine(model, kind, LABEL_IDS, opts), kind


# first, last layer, whole head and single position (2 layers: "middle" is covered on e5 below)
SOURCE_SETS = [[(0, 1)], [(1, 3)], [(0, 2, 4)], [(1, 0, 2)], [(0, 1), (1, 2)], [(0, 3, 10)]]
# LayerNorm families, which HF computes in the model's dtype (the decoders' RMSNorms: float32)
HF_EXACT = ("bert", "gpt2")
# GPT-2's many biased nodes: bias_eps > 0 drops bias * eps / (|beta| + |gamma| + eps) per entry,
# so a few near-zero entries drift (~1e-3 of a layer output, ~2e-4 at the logits at 1e-8); its
# exactness checks that compare layer outputs or options run at eps = 0 (see ctsft.cdt.rules)
BIAS_DRIFT = ("gpt2",)


@pytest.mark.parametrize("arch", TINY_ARCHES)
@pytest.mark.parametrize(
    ("dtype", "eps", "tol"),
    [(torch.float32, 1e-8, 1e-4), (torch.float32, 0.0, 1e-4), (torch.float64, 0.0, 1e-9)],
)
def test_beta_plus_gamma_is_the_forward(
    arch: str, dtype: torch.dtype, eps: float, tol: float
) -> None:
    model, engine, kind = setup(arch, dtype, CDTOptions(bias_eps=eps))
    batch = make_batch()
    real = batch["attention_mask"].bool()
    mu = torch.randn(2, 4, engine.geo.d_head, dtype=dtype)
    cache = engine.clean(batch)
    hidden, logits = hf_reference(model, kind, batch)
    # the engine's own forward reproduces HF (float32-level: HF's RMSNorms compute in float32)
    hf_tol = tol if arch in HF_EXACT else 1e-4
    assert (cache.logits - logits).abs().max() < hf_tol
    for layer, h in enumerate(hidden):
        assert (cache.hidden[layer][real] - h[real]).abs().max() < hf_tol
    naive = engine.decompose_naive(batch, SOURCE_SETS, mu, record_layers=True)
    assert naive.beta.abs().max() > 1e-6  # the decomposition is not trivially all-gamma
    reference_logits = logits if hf_tol == tol else cache.logits
    assert ((naive.beta + naive.gamma) - reference_logits).abs().max() < tol
    if not (eps and arch in BIAS_DRIFT):
        for layer, (beta, gamma) in enumerate(naive.layers):
            exact = layer < len(hidden) and hf_tol == tol
            target = hidden[layer] if exact else cache.hidden[layer]
            assert ((beta + gamma)[:, real] - target[real]).abs().max() < tol
    fast = engine.decompose(batch, SOURCE_SETS, mu, cache=cache)
    assert ((fast.beta + fast.gamma) - reference_logits).abs().max() < tol
    # fast == naive (identical up to the bias_eps drift; float rounding otherwise)
    assert (fast.beta - naive.beta).abs().max() < (1e-10 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_fast_layers_match_naive_layers(arch: str) -> None:
    _, engine, _ = setup(arch, torch.float64, CDTOptions(bias_eps=0.0))
    batch = make_batch(1)
    real = batch["attention_mask"].bool()
    mu = torch.randn(2, 4, engine.geo.d_head, dtype=torch.float64)
    sets = [[(1, 2)], [(1, 0, 3)]]
    naive = engine.decompose_naive(batch, sets, mu, record_layers=True)
    fast = engine.decompose(batch, sets, mu, record_layers=True)
    assert fast.layers[0] is None  # below the source layer nothing is computed
    assert (fast.layers[1][0][:, real] - naive.layers[1][0][:, real]).abs().max() < 1e-10
    assert (fast.beta - naive.beta).abs().max() < 1e-10


ZERO_SETS = [[(0, 1)], [(0, 3, 2)]]


def own_activation_mu(engine: CDTEngine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-position mu equal to row 0's own layer-0 head outputs (from the clean cache)."""
    z = engine.clean(batch).tensors["0.z"][0]  # [B, T, H, dh]
    mu = torch.zeros(2, z.shape[1], 4, engine.geo.d_head)
    mu[0] = z[0]
    return mu


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_source_equal_to_mu_gives_zero_beta(arch: str) -> None:
    """Fast path, default conventions: the source is the cached z itself."""
    batch = make_batch(2)
    _, engine, _ = setup(arch, torch.float32, CDTOptions())
    cache = engine.clean(batch)
    mu = own_activation_mu(engine, batch)
    fast = engine.decompose(batch, ZERO_SETS, mu, cache=cache, record_layers=True)
    assert torch.count_nonzero(fast.beta[:, 0]) == 0
    assert all(torch.count_nonzero(layer[0][:, 0]) == 0 for layer in fast.layers)
    assert torch.count_nonzero(fast.beta[:, 1]) > 0  # other rows do carry relevance


NAIVE_LN_ROUNDING = pytest.mark.xfail(
    strict=True,
    reason="the clean LayerNorm (cdt/passes.py _TotalsPass.norm) rounds ((x - mean) * inv) * w, "
    "the two-part rule (x - mean) * (inv * w): GPT-2 is the first pre-LayerNorm family, so the "
    "naive path's layer-0 z differs from the cached z in the last bit",
)


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=NAIVE_LN_ROUNDING) if a == "gpt2" else a for a in TINY_ARCHES]
)
def test_naive_source_equal_to_mu_gives_exactly_zero_beta(arch: str) -> None:
    """The naive path recomputes z: zero beta needs it bit-identical to the cached z (a last-bit
    residue is not harmless: the sign clean-ups turn it into ~1e-4 of beta at the logits)."""
    batch = make_batch(2)
    _, exact, _ = setup(arch, torch.float32, CDTOptions(bias_eps=0.0))
    mu = own_activation_mu(exact, batch)
    for source_set in ZERO_SETS:
        naive = exact.decompose_naive(batch, [source_set], mu, record_layers=True)
        assert torch.count_nonzero(naive.beta[:, 0]) == 0
        assert all(torch.count_nonzero(layer[0][:, 0]) == 0 for layer in naive.layers)


@pytest.mark.parametrize("arch", ["bert", "qwen2", "gpt2"])
def test_batched_equals_one_at_a_time(arch: str) -> None:
    _, engine, _ = setup(arch, torch.float32, CDTOptions())
    batch = make_batch(3)
    mu = torch.randn(2, 4, engine.geo.d_head)
    cache = engine.clean(batch)
    sets = [[(layer, head)] for layer in range(2) for head in range(4)]
    together = torch.cat(
        [
            engine.decompose(batch, sets[:4], mu, cache).beta,
            engine.decompose(batch, sets[4:], mu, cache).beta,
        ]
    )
    alone = torch.cat([engine.decompose(batch, [s], mu, cache).beta for s in sets])
    assert (together - alone).abs().max() < 1e-6


@pytest.mark.parametrize(
    "opts",
    [
        CDTOptions(frozen_attention=True),
        CDTOptions(normalize_rel_irrel=False),
        CDTOptions(convention="simple"),
    ],
)
@pytest.mark.parametrize("arch", ["bert", "gemma3", "gpt2"])
def test_options_keep_exactness(arch: str, opts: CDTOptions) -> None:
    if arch in BIAS_DRIFT:
        opts = dataclasses.replace(opts, bias_eps=0.0)
    model, engine, kind = setup(arch, torch.float32, opts)
    batch = make_batch(4)
    mu = torch.randn(2, 4, engine.geo.d_head)
    cache = engine.clean(batch)
    naive = engine.decompose_naive(batch, SOURCE_SETS, mu)
    fast = engine.decompose(batch, SOURCE_SETS, mu, cache=cache)
    # float32 rounding scales with the parts (without the clean-up they grow and cancel)
    tol = 1e-4 * max(1.0, float(naive.beta.abs().max()), float(cache.logits.abs().max()))
    assert ((naive.beta + naive.gamma) - cache.logits).abs().max() < tol
    # without the clean-up Gemma3's parts reach ~1e3 around logits ~0.3: float32 cancellation
    assert (fast.beta - naive.beta).abs().max() < 10 * tol
    # tiny BERT's attention is near-uniform; Gemma3 has no biases to share
    if (arch, opts) not in (
        (("bert", CDTOptions(frozen_attention=True))),
        ("gemma3", CDTOptions(convention="simple")),
    ):
        default = CDTEngine(model, kind, LABEL_IDS, CDTOptions(bias_eps=opts.bias_eps)).decompose(
            batch, SOURCE_SETS, mu, cache=cache
        )
        assert (default.beta - fast.beta).abs().max() > 1e-7  # the option changes something


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_cached_ablation_equals_hooked_forward(arch: str) -> None:
    model, engine, kind = setup(arch, torch.float32, CDTOptions())
    batch = make_batch(5)
    mu = torch.randn(2, 4, engine.geo.d_head)
    cache = engine.clean(batch)
    sets = [[(0, 1)], [(1, 3)], [(0, 1), (1, 2)]]
    fast = engine.ablate(cache, sets, mu)
    for s, heads in enumerate(sets):

        def edit(layer: int, z: torch.Tensor, heads=heads) -> torch.Tensor:
            z = z.clone()
            for lay, head in heads:
                if lay == layer:
                    z[:, :, head] = mu[layer, head]
            return z

        with engine.adapter.edit_head_outputs(edit):
            _, logits = hf_reference(model, kind, batch)
        assert (fast[s] - logits).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["bert", "gemma3", "gpt2"])
def test_compiled_rules_equal_eager_rules(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile'd node rules (GELU post-LN BERT; gated GELU-tanh sandwich-RMSNorm Gemma3;
    GPT-2, whose gelu_new MLP node stays eager: not nameable): same decomposition as the eager
    rules, still exact, still zero beta for a source equal to mu."""
    # fuse the tiny model's nodes too, except the pruned read-out ones (as on a real model)
    monkeypatch.setattr(rules, "FUSE_MIN_NUMEL", 4096)
    model, eager, kind = setup(arch, torch.float32, CDTOptions())
    fused = CDTEngine(model, kind, LABEL_IDS, CDTOptions(compile=True))
    batch = make_batch(6)
    mu = torch.randn(2, 4, eager.geo.d_head)
    cache = eager.clean(batch)
    want = eager.decompose(batch, SOURCE_SETS, mu, cache=cache)
    got = fused.decompose(batch, SOURCE_SETS, mu, cache=cache)
    assert fused.options.compile and node_rules(True).compiled  # really compiled, no fallback
    assert (got.beta - want.beta).abs().max() < 1e-5
    assert ((got.beta + got.gamma) - cache.logits).abs().max() < 1e-4
    own = own_activation_mu(eager, batch)  # row 0's source activation is mu itself
    zero = fused.decompose(batch, [[(0, 1)], [(0, 2, 3)]], own, cache=cache)
    assert torch.count_nonzero(zero.beta[:, 0]) == 0


def test_rules_fall_back_to_eager_when_compilation_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(rules, "FUSE_MIN_NUMEL", 0)
    node = NodeRules(compiled=True)
    x, y = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    want = add_node(x, y, y, x, True)
    with caplog.at_level("WARNING"):
        got = node.add(x, y, y, x, True)
    assert not node.compiled and "no C++ compiler" in caplog.text
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
