"""A tiny random XLM-R (NusaX's standard baseline family) through every step that touches a model.

XLM-R has no pooler and a two-layer classifier (`classifier.dense` + tanh, `classifier.out_proj`);
the adapter hides that, so CD-T, mean baseline, scoring, transfer and evaluation run unchanged.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from ctsft.cdt import CDTEngine, CDTOptions, engine
from ctsft.config import compose
from ctsft.models import get_model_spec, load_task_model, prepare_model
from ctsft.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_xlmr") / "tiny_xlmr"
    prepare_model(get_model_spec("tiny_xlmr"), out)
    return out


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 900, (3, 14), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2])}


def test_the_engine_reaches_the_head_through_the_adapter() -> None:
    source = inspect.getsource(engine)
    assert ".bert." not in source and ".roberta." not in source
    model = tiny_model("xlmr")
    head = CDTEngine(model, "encoder")
    assert head.pooler is model.classifier.dense and head.classifier is model.classifier.out_proj


def test_beta_plus_gamma_is_the_forward_on_xlmr() -> None:
    model = tiny_model("xlmr").to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # biases 0 and norm weights 1 at init: make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
    cdt = CDTEngine(model, "encoder", options=CDTOptions(bias_eps=0.0))
    batch = _batch()
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cache = cdt.clean(batch)
    assert (cache.logits - ref).abs().max() < 1e-9
    mu = torch.randn(2, 4, 8, dtype=torch.float64)
    sets = [[(0, 1)], [(1, 3)], [(0, 2, 3)], [(0, 1), (1, 2)]]
    fast = cdt.decompose(batch, sets, mu, cache=cache)
    naive = cdt.decompose_naive(batch, sets, mu)
    assert fast.beta.abs().max() > 1e-6
    assert ((fast.beta + fast.gamma) - ref).abs().max() < 1e-9
    assert ((naive.beta + naive.gamma) - ref).abs().max() < 1e-9
    assert (fast.beta - naive.beta).abs().max() < 1e-10


def test_xlmr_through_discovery_transfer_and_evaluation(xlmr_dir: Path, tmp_path: Path) -> None:
    from ctsft.steps import (
        evaluate,
        faithfulness,
        mean_baseline,
        score_heads,
        select_circuit,
        transfer,
    )

    io = {
        "proxy_checkpoint": xlmr_dir, "mu": tmp_path / "mu.safetensors",
        "scores": tmp_path / "scores.tsv", "heatmap": tmp_path / "heat.png",
        "circuit": tmp_path / "circuit.json", "faithfulness": tmp_path / "faith.json",
        "checkpoint": tmp_path / "ctsft", "metrics": tmp_path / "metrics.json",
    }  # fmt: skip
    cfg = compose(
        ["model=tiny_xlmr", "train=tiny", "method=ctsft", "target=jav", "threads=1"]
        + ["task.train_size=12", "task.eval_size=12"]
        + ["cdt.n_per_label=3", "cdt.correct_only=false", "cdt.k=2", "cdt.random_sets=2"]
        + ["task.eval_size=12", "cdt.batch_size=8"]
        + [f"io.{k}={v}" for k, v in io.items()]
    )
    record = mean_baseline.run(cfg)
    assert record["shape"] == [2, 4, 8]
    score_heads.run(cfg)
    select_circuit.run(cfg)
    circuit = json.loads(io["circuit"].read_text())
    assert circuit["model"] == "tiny_xlmr" and len(circuit["circuit"]) == 2
    report = faithfulness.run(cfg)
    assert 0 <= report["circuit"]["accuracy"] <= 1
    before = load_task_model(xlmr_dir, "nusax", seed=int(cfg.seed))
    trained = transfer.run(cfg)
    assert 0 < trained["trainable"] < trained["total"] and trained["steps"] > 0
    after = load_task_model(io["checkpoint"], "nusax")
    b, a = dict(before.hf.named_parameters()), dict(after.hf.named_parameters())
    # the task head (classifier.dense / out_proj) stays frozen; the circuit heads moved
    assert all(torch.equal(a[n], b[n]) for n in a if n.startswith("classifier."))
    layer, head = circuit["circuit"][0]
    q = f"roberta.encoder.layer.{layer}.attention.self.query.weight"
    assert not torch.equal(a[q][head * 8 : (head + 1) * 8], b[q][head * 8 : (head + 1) * 8])
    metrics = evaluate.run(cfg)
    assert metrics["method"] == "ctsft" and 0 <= metrics["accuracy"] <= 1
    assert metrics["params_updated"] == trained["trainable"] and metrics["n_test"] == 12
