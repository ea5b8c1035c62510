"""Attribution patching scores: equal to a head-by-head autograd computation, first-order in the
size of the patch, selectable from the config, and compared to CD-T in the faithfulness report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ctsft.adapters import get_adapter
from ctsft.cdt import CDTEngine
from ctsft.cdt.scores import score_heads
from ctsft.config import compose
from ctsft.errors import CtsftError
from ctsft.models.tiny import tiny_model

LABEL_IDS = [10, 11, 12]  # label tokens of the causal tiny model


def setup(arch: str, per_position: bool = False, dtype: torch.dtype = torch.float32) -> tuple:
    """(model, engine, batch, mu): a tiny model (read-out scaled up), a right-padded batch with
    labels, mu of its own activations (label-blind mean, shifted so no head sits at mu)."""
    model = tiny_model(arch, seed=2).to(dtype)
    kind = "encoder" if arch == "bert" else "causal"
    with torch.no_grad():  # visible logit differences (a random read-out is near zero)
        if kind == "encoder":
            model.classifier.weight *= 200.0
        else:  # the final norm (GPT-2 ties lm_head to the embeddings)
            get_adapter(model).final_norm().weight.mul_(50.0)
    engine = CDTEngine(model, kind, None if kind == "encoder" else LABEL_IDS)
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(5, 900, (6, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad(), engine.adapter.capture_head_outputs() as store:
        model(input_ids=ids, attention_mask=mask)
    z = torch.stack([store[i] for i in range(2)])  # [L, B, T, H, dh]
    noise = 0.3 * torch.randn(z.shape[2:], generator=gen, dtype=dtype)  # [T, H, dh]
    if per_position:  # [L, T_mu, H, dh], longer than the batch
        mu = torch.cat([z.mean(1) + noise, torch.zeros(2, 3, 4, 8, dtype=dtype)], dim=1)
    else:
        mu = z.mean((1, 2)) + noise.mean(0)
    return model, engine, batch, mu


def logits_of(model: torch.nn.Module, arch: str, batch: dict) -> torch.Tensor:
    """Class logits from the full Hugging Face forward (not the code under test)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if arch == "bert":
        return out
    last = batch["attention_mask"].sum(1) - 1
    return out[torch.arange(out.shape[0]), last][:, LABEL_IDS]


def margin_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    gold = logits[torch.arange(logits.shape[0]), labels]
    return gold - (logits.sum(-1) - gold) / (logits.shape[-1] - 1)


def layer_mu(mu: torch.Tensor, layer: int, n_pos: int) -> torch.Tensor:
    """`[T or 1, H, dh]` of one layer."""
    return mu[layer, :n_pos] if mu.dim() == 4 else mu[layer].unsqueeze(0)


def brute_force(model: torch.nn.Module, arch: str, batch: dict, mu: torch.Tensor) -> torch.Tensor:
    """Head by head: autograd of the margin wrt that head's slice of the o-projection input."""
    adapter = get_adapter(model)
    geo = adapter.geometry
    dh, mask = geo.d_head, batch["attention_mask"].to(mu.dtype)
    out = torch.zeros(geo.n_layers, geo.n_heads, dtype=torch.float64)
    for layer in range(geo.n_layers):
        for head in range(geo.n_heads):
            leaf: list[torch.Tensor] = []

            def hook(_m: torch.nn.Module, args: tuple, h: int = head, leaf: list = leaf) -> tuple:
                x = args[0]
                a = x[..., h * dh : (h + 1) * dh].detach().clone().requires_grad_(True)
                leaf.append(a)
                return (torch.cat([x[..., : h * dh], a, x[..., (h + 1) * dh :]], -1),)

            handle = adapter.layer(layer).attn.o.register_forward_pre_hook(hook)
            try:
                margin = margin_of(logits_of(model, arch, batch), batch["labels"])
                (grad,) = torch.autograd.grad(margin.sum(), leaf[0])
            finally:
                handle.remove()
            mu_h = layer_mu(mu, layer, mask.shape[1])[:, head]  # [T or 1, dh]
            per_pos = (grad * (leaf[0].detach() - mu_h)).sum(-1)  # [B, T]
            out[layer, head] = (per_pos * mask).sum(1).mean(0)
    return out


@pytest.mark.parametrize(
    "arch, per_position",
    [("bert", False), ("bert", True), ("llama", False), ("llama", True), ("gpt2", False)],
)
def test_attribution_equals_head_by_head_autograd(arch: str, per_position: bool) -> None:
    model, engine, batch, mu = setup(arch, per_position)
    scores, n = score_heads(engine, [batch], mu, "attribution", progress=False)
    assert scores.shape == (2, 4) and scores.dtype == torch.float32 and n == 6
    expected = brute_force(model, arch, batch, mu)
    assert expected.abs().max() > 1e-3  # not trivially zero
    diff = (scores.double() - expected).abs().max()
    assert diff < 1e-5 and diff < 1e-4 * expected.abs().max()
    # batches are averaged per example: two halves give the same scores
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    split, n_split = score_heads(engine, halves, mu, "attribution", progress=False)
    assert n_split == 6 and (split - scores).abs().max() < 1e-6


# float64 all through: Llama-style models compute RMSNorm and softmax in float32 whatever the
# model dtype, which leaves finite differences of size 1e-4 at float32 noise
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_attribution_is_the_first_order_effect_of_moving_toward_mu(arch: str) -> None:
    model, engine, batch, mu = setup(arch, dtype=torch.float64)
    scores, _ = score_heads(engine, [batch], mu, "attribution", progress=False)
    eps = 1e-4
    geo, mask = engine.geo, batch["attention_mask"].bool()
    with torch.no_grad():
        clean = margin_of(logits_of(model, arch, batch), batch["labels"]).mean()
        for layer in range(geo.n_layers):
            for head in range(geo.n_heads):

                def nudge(index: int, z: torch.Tensor, s: tuple = (layer, head)) -> torch.Tensor:
                    if index != s[0]:
                        return z
                    z = z.clone()
                    mu_h = layer_mu(mu, index, z.shape[1])[:, s[1]]
                    moved = z[:, :, s[1]] + eps * (mu_h - z[:, :, s[1]])
                    z[:, :, s[1]] = torch.where(mask[..., None], moved, z[:, :, s[1]])
                    return z

                with engine.adapter.edit_head_outputs(nudge):
                    nudged = margin_of(logits_of(model, arch, batch), batch["labels"]).mean()
                change, predicted = float(nudged - clean), -eps * float(scores[layer, head])
                assert abs(change - predicted) <= 1e-2 * abs(predicted), (layer, head)


def test_attribution_is_a_config_choice() -> None:
    assert compose(["cdt.score=attribution"]).cdt.score == "attribution"
    with pytest.raises(CtsftError) as err:
        compose(["cdt.score=margin"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad config value cdt.score='margin'")
    assert message.endswith("expected one of directional, cdt_ratio, ablation, attribution")


def test_faithfulness_report_compares_attribution_with_cdt(
    tiny_model_dirs: dict, tmp_path: Path
) -> None:
    from ctsft.steps import faithfulness, mean_baseline, score_heads, select_circuit

    io = {
        "proxy_checkpoint": tiny_model_dirs["tiny_bert"], "mu": tmp_path / "mu.safetensors",
        "scores": tmp_path / "scores.tsv", "heatmap": tmp_path / "heat.png",
        "circuit": tmp_path / "circuit.json", "faithfulness": tmp_path / "faith.json",
    }  # fmt: skip
    cfg = compose(
        ["model=tiny_bert", "cdt.n_per_label=3", "cdt.correct_only=false", "cdt.k=2",
         "cdt.random_sets=1", "task.eval_size=6", "cdt.batch_size=8", "cdt.score=attribution"]
        + [f"io.{k}={v}" for k, v in io.items()]
    )  # fmt: skip
    mean_baseline.run(cfg)
    score_heads.run(cfg)
    select_circuit.run(cfg)
    faithfulness.run(cfg)
    report = json.loads(io["faithfulness"].read_text())
    correlations = report["spearman_vs_single_head_ablation"]
    assert set(correlations) == {"tsv_attribution", "directional"}
    comparison = report["score_comparison"]
    assert comparison["n_examples"] == report["single_head_ablation"]["n_examples"] == 9
    for kind in ("attribution", "directional"):
        rho = comparison[kind]["spearman_vs_ablation"]["rho"]
        assert math.isfinite(rho) and -1 <= rho <= 1
        assert math.isfinite(comparison[kind]["seconds"]) and comparison[kind]["seconds"] > 0
    assert (
        math.isfinite(comparison["ablation"]["seconds"]) and comparison["ablation"]["seconds"] > 0
    )
    # the TSV's own correlation is the attribution one, computed from the same scores
    assert correlations["tsv_attribution"]["rho"] == pytest.approx(
        comparison["attribution"]["spearman_vs_ablation"]["rho"], abs=1e-6
    )
    assert correlations["directional"] == comparison["directional"]["spearman_vs_ablation"]
