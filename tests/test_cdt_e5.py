"""CD-T exactness on the real multilingual-e5-small (12 layers x 12 heads), few examples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ctsft.cdt import CDTEngine, CDTOptions
from ctsft.models import load_task_model

CACHED = Path(os.environ.get("CTSFT_E5_DIR", "/tmp/ctsft_models/e5_small"))


@pytest.fixture(scope="module")
def e5(request: pytest.FixtureRequest):
    folder = CACHED if (CACHED / "config.json").is_file() else request.getfixturevalue("e5_dir")
    model = load_task_model(folder, "nusax", seed=0).eval()
    batch = model.encode(
        [
            {"text": "Makanannya enak sekali, pelayanannya juga ramah.", "label": 2},
            {"text": "Buruk.", "label": 0},
        ]
    )
    return model, batch


@pytest.mark.slow
def test_e5_beta_plus_gamma_is_the_forward(e5) -> None:
    model, batch = e5
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # padding present
    engine = CDTEngine.from_task_model(model)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        out = model.hf(
            **{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True
        )
    mu = torch.randn(12, 12, 32) * 0.1
    sets = [
        [(0, 3)],
        [(6, 7)],
        [(11, 0)],
        [(6, 2, 1)],
        [(11, 5, 0)],
    ]  # first/middle/last, whole/one position
    naive = engine.decompose_naive(batch, sets, mu, record_layers=True)
    assert ((naive.beta + naive.gamma) - out.logits).abs().max() < 1e-4
    # Layer outputs: the 1e-8 of the bias shares drifts up to ~1e-3 in e5's intermediate layers
    # (the logits stay within 1e-4); with bias_eps = 0 every layer output is exact to 1e-4.
    for layer, (beta, gamma) in enumerate(naive.layers):
        assert ((beta + gamma)[:, real] - out.hidden_states[layer + 1][real]).abs().max() < 5e-3
    exact = CDTEngine.from_task_model(model, CDTOptions(bias_eps=0.0))
    naive0 = exact.decompose_naive(batch, sets, mu, record_layers=True)
    assert ((naive0.beta + naive0.gamma) - out.logits).abs().max() < 1e-4
    for layer, (beta, gamma) in enumerate(naive0.layers):
        assert ((beta + gamma)[:, real] - out.hidden_states[layer + 1][real]).abs().max() < 1e-4
    cache = engine.clean(batch)
    assert (cache.logits - out.logits).abs().max() < 1e-4
    fast = engine.decompose(batch, sets, mu, cache=cache)
    assert ((fast.beta + fast.gamma) - out.logits).abs().max() < 1e-4
    assert (fast.beta - naive.beta).abs().max() < 1e-4
    assert naive.beta.abs().max() > 1e-4
