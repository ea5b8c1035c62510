"""Head scores: a constructed driver head tops the directional ranking, its mirror is negative."""

from __future__ import annotations

import torch

from ctsft.cdt import CDTEngine, scores_table
from ctsft.cdt.margin import gold_margin
from ctsft.cdt.scores import cdt_ratio, score_heads
from ctsft.models.tiny import tiny_model

DRIVER, OPPOSER = (1, 2), (1, 0)


def constructed_model() -> torch.nn.Module:
    """Tiny BERT where head DRIVER is amplified and head OPPOSER is a sign-flipped copy of it."""
    model = tiny_model("bert", seed=3)
    dh = 8
    attn = model.bert.encoder.layer[1].attention
    d, o = DRIVER[1], OPPOSER[1]
    with torch.no_grad():
        for proj in (attn.self.query, attn.self.key, attn.self.value):  # same z for both heads
            proj.weight[o * dh : (o + 1) * dh] = proj.weight[d * dh : (d + 1) * dh]
            proj.bias[o * dh : (o + 1) * dh] = proj.bias[d * dh : (d + 1) * dh]
        w = attn.output.dense.weight
        w[:, d * dh : (d + 1) * dh] *= 6.0
        w[:, o * dh : (o + 1) * dh] = -w[:, d * dh : (d + 1) * dh] / 6.0
        model.classifier.weight *= 20.0  # visible logit differences
    return model.eval()


def test_driver_head_tops_and_opposer_is_negative() -> None:
    model = constructed_model()
    engine = CDTEngine(model, "encoder")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 900, (24, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    cache = engine.clean(batch)
    z = cache.tensors[f"{DRIVER[0]}.z"][0]  # [B, T, H, dh]
    weights = mask / mask.sum(1, keepdim=True)
    mu = torch.zeros(2, 4, 8)
    mu[DRIVER[0]] = torch.einsum("bthd,bt->hd", z, weights.float()) / ids.shape[0]
    # ground truth: the gold label is where ablating the driver (to mu) takes the most logit away
    ablated = engine.ablate(cache, [[DRIVER]], mu)[0]
    labels = (cache.logits - ablated).argmax(-1)
    assert len(set(labels.tolist())) > 1  # the driver's preference depends on the input
    batch["labels"] = labels
    scores, n = score_heads(engine, [batch], mu, "directional", head_batch=3, progress=False)
    assert n == 24
    flat = scores.flatten()
    assert flat.argmax().item() == DRIVER[0] * 4 + DRIVER[1]
    assert scores[OPPOSER] < 0
    assert scores[DRIVER] > 0
    table = scores_table(scores, n, "directional")
    top = table.sort_values("rank").iloc[0]
    assert (top["layer"], top["head"]) == DRIVER
    # the ablation score agrees on the sign
    ablation, _ = score_heads(engine, [batch], mu, "ablation", progress=False)
    assert ablation[DRIVER] > 0 and ablation[OPPOSER] < 0


def test_score_helpers() -> None:
    logits = torch.tensor([[3.0, 1.0, -1.0], [0.0, 2.0, 4.0]])
    labels = torch.tensor([0, 1])
    assert torch.allclose(gold_margin(logits, labels), torch.tensor([3.0, 0.0]))
    beta = torch.tensor([[1.0, -1.0, 0.0]])
    gamma = torch.tensor([[2.0, 2.0, 0.0]])
    assert torch.allclose(cdt_ratio(beta, gamma), torch.tensor([0.5]))


def test_cdt_ratio_is_nonnegative_and_batched_scores_match() -> None:
    model = tiny_model("llama", seed=1)
    engine = CDTEngine(model, "causal", [10, 11, 12])
    ids = torch.randint(5, 900, (4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 0])}
    mu = torch.randn(2, 4, 8)
    ratio, _ = score_heads(engine, [batch], mu, "cdt_ratio", progress=False)
    assert (ratio >= 0).all() and (ratio > 0).any()
    grouped, _ = score_heads(engine, [batch], mu, "directional", head_batch=4, progress=False)
    single, _ = score_heads(engine, [batch], mu, "directional", head_batch=1, progress=False)
    assert (grouped - single).abs().max() < 1e-6
