"""`cdt.path`: the decomposition scores on the fast (cached) path or the reference (naive
two-stream) path. Without the bias-share tolerance both give the same scores; with it, the
reference scores are the naive decomposition's, head by head; ablation and attribution ignore it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_cdt_engine import LABEL_IDS, SOURCE_SETS, make_batch, setup

from ctsft.cdt import CDTEngine, CDTOptions
from ctsft.cdt.margin import gold_margin
from ctsft.cdt.scores import cdt_ratio, score_heads
from ctsft.cli import run_step
from ctsft.config import compose
from ctsft.errors import CtsftError
from ctsft.models.tiny import TINY_ARCHES
from ctsft.steps.shared.discovery import cdt_options

DECOMPOSING = ("directional", "cdt_ratio")
F32_ULP = 2.0**-23  # relative: scores come back in float32


def engines(arch: str, eps: float) -> tuple[CDTEngine, CDTEngine]:
    """(fast, reference) engines on one float64 tiny model with non-trivial biases and norms."""
    model, fast, kind = setup(arch, torch.float64, CDTOptions(bias_eps=eps))
    ids = None if kind == "encoder" else LABEL_IDS
    return fast, CDTEngine(model, kind, ids, CDTOptions(bias_eps=eps, path="reference"))


def mu_of(engine: CDTEngine) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(2, 4, engine.geo.d_head, generator=gen, dtype=torch.float64)


def scores(engine: CDTEngine, kind: str, mu: torch.Tensor) -> torch.Tensor:
    return score_heads(engine, [make_batch()], mu, kind, head_batch=3, progress=False)[0]


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_paths_agree_without_the_bias_tolerance(arch: str) -> None:
    fast, reference = engines(arch, eps=0.0)
    mu = mu_of(fast)
    batch = make_batch()
    cache = fast.clean(batch)
    want = fast.decompose_on_path(batch, SOURCE_SETS, mu, cache)
    got = reference.decompose_on_path(batch, SOURCE_SETS, mu, cache)
    assert want.beta.dtype == torch.float64 and want.beta.abs().max() > 1e-3
    assert (got.beta - want.beta).abs().max() < 1e-10
    assert (got.gamma - want.gamma).abs().max() < 1e-10
    for kind in DECOMPOSING:
        a, b = scores(fast, kind, mu), scores(reference, kind, mu)
        assert a.abs().max() > 1e-4
        torch.testing.assert_close(b, a, rtol=F32_ULP, atol=1e-10)


def naive_scores(engine: CDTEngine, batch: dict, mu: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each head on its own, through `decompose_naive` on the whole padded batch (no length
    groups, no stacking): the reference scores computed without `score_heads`."""
    geo, labels = engine.geo, batch["labels"]
    out = {
        kind: torch.zeros(geo.n_layers, geo.n_heads, dtype=torch.float64) for kind in DECOMPOSING
    }
    for layer in range(geo.n_layers):
        for head in range(geo.n_heads):
            dec = engine.decompose_naive(batch, [[(layer, head)]], mu)
            out["directional"][layer, head] = gold_margin(dec.beta[0], labels).mean()
            out["cdt_ratio"][layer, head] = cdt_ratio(dec.beta[0], dec.gamma[0]).mean()
    return {kind: value.float() for kind, value in out.items()}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])  # families with biases to share
def test_reference_scores_are_the_naive_decomposition(arch: str) -> None:
    fast, reference = engines(arch, eps=CDTOptions().bias_eps)
    mu = mu_of(fast)
    direct = naive_scores(reference, make_batch(), mu)
    for kind in DECOMPOSING:
        got = scores(reference, kind, mu)
        torch.testing.assert_close(got, direct[kind], rtol=2 * F32_ULP, atol=1e-12)
        # the default tolerance loses bias mass on the reference path only: the paths differ by
        # 10x the rounding allowed above (here 1e-5 to 1e-4 of the scale: the bias-share drift)
        assert (scores(fast, kind, mu) - got).abs().max() > 20 * F32_ULP * got.abs().max()
    for kind in ("ablation", "attribution"):  # no decomposition: the path changes nothing
        assert torch.equal(scores(reference, kind, mu), scores(fast, kind, mu))


def test_a_bad_path_is_a_one_line_error() -> None:
    message = "cdt.path must be one of fast, reference, got 'slow'"
    with pytest.raises(CtsftError) as err:
        CDTOptions(path="slow")
    assert str(err.value) == message
    # a composed config is checked first, with the message of every other choice key
    with pytest.raises(CtsftError) as err:
        compose(["cdt.path=slow"])
    assert str(err.value) == "bad config value cdt.path='slow': expected one of fast, reference"
    assert cdt_options(compose([])).path == "fast"
    assert cdt_options(compose(["cdt.path=reference"])).path == "reference"


def test_the_step_scores_on_the_configured_path_and_records_it(
    tiny_model_dirs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from ctsft.steps import mean_baseline
    from ctsft.steps import score_heads as step

    calls = {"decompose": 0, "decompose_naive": 0}
    for name in calls:
        original = getattr(CDTEngine, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(CDTEngine, name, spy)
    io = {"proxy_checkpoint": tiny_model_dirs["tiny_bert"], "mu": tmp_path / "mu.safetensors"}
    base = ["model=tiny_bert", "cdt.n_per_label=3", "cdt.correct_only=false", "cdt.batch_size=8"]
    base += [f"io.{k}={v}" for k, v in io.items()]
    mean_baseline.run(compose(base))
    tables = {}
    for path in ("fast", "reference"):
        out = {"scores": tmp_path / f"{path}.tsv", "heatmap": tmp_path / f"{path}.png"}
        for name in calls:
            calls[name] = 0
        step.run(compose([*base, f"cdt.path={path}"] + [f"io.{k}={v}" for k, v in out.items()]))
        used = "decompose_naive" if path == "reference" else "decompose"
        assert calls[used] > 0 and sum(calls.values()) == calls[used]
        record = json.loads(Path(str(out["scores"]) + ".json").read_text())
        assert record["options"]["path"] == path
        tables[path] = pd.read_csv(out["scores"], sep="\t")
    # a freshly prepared model has zero biases: nothing to share, both paths agree (to float32
    # rounding: its scores ~5e-6 are differences of logits ~1e-1)
    diff = (tables["fast"]["score"] - tables["reference"]["score"]).abs().max()
    assert diff < 1e-3 * tables["fast"]["score"].abs().max()
    extra = ["cdt.path=slow", f"io.scores={tmp_path / 's.tsv'}", f"io.heatmap={tmp_path / 'h.png'}"]
    assert run_step(step.run, base + extra) == 2
    err = capsys.readouterr().err  # after the model's loading bars: one line, no traceback
    assert err.splitlines()[-1] == (
        "error: bad config value cdt.path='slow': expected one of fast, reference"
    )
    assert "Traceback" not in err
