"""The CD-T engine's outputs, bit for bit, against values written by the engine before its passes
were refactored (positions passed explicitly, z edited at one `hook_z`).

Every mode (`clean`, `decompose` with head sets / single heads / per-position mu, `decompose_naive`,
`ablate`) and the three CD-T score kinds, on every tiny family, under the reference options and a
second set (free attention, simple convention, eps 0). The values in tests/data were written with
`python tests/test_cdt_golden.py` on the pinned torch, CPU, one thread; another torch build may round
differently, so there the test only asks for closeness.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ctsft.cdt import CDTEngine, CDTOptions
from ctsft.cdt.scores import score_heads
from ctsft.models.tiny import TINY_ARCHES, tiny_model

GOLDEN = Path(__file__).parent / "data" / "cdt_golden.safetensors"
LABEL_IDS = [5, 6, 7]
SETS = [[(0, 1)], [(1, 3)], [(0, 2, 4)], [(1, 0, 2)], [(0, 1), (1, 2)], [(0, 3, 10)]]
HEADS = [[(0, 1)], [(1, 3)], [(0, 1), (1, 2)], [(0, 0), (0, 3)]]
OPTIONS = {
    "reference": CDTOptions(),
    "free": CDTOptions(frozen_attention=False, convention="simple", bias_eps=0.0),
}


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 900, (3, 21), generator=gen)
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2])}


def engine_outputs() -> dict[str, torch.Tensor]:
    """Every mode's output on every tiny family, by name."""
    out: dict[str, torch.Tensor] = {}
    batch = _batch()
    for arch in TINY_ARCHES:
        model = tiny_model(arch)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial biases and norm weights
            for name, param in model.named_parameters():
                if name.endswith("bias") or "norm" in name.lower() or ".ln_" in name:
                    param.add_(0.1 * torch.randn(param.shape, generator=gen))
        kind = "encoder" if arch == "bert" else "causal"
        for opt_name, opts in OPTIONS.items():
            engine = CDTEngine(model, kind, LABEL_IDS, opts)
            geo = engine.geo
            mu_head = 0.1 * torch.randn(geo.n_layers, geo.n_heads, geo.d_head, generator=gen)
            mu_pos = 0.1 * torch.randn(geo.n_layers, 21, geo.n_heads, geo.d_head, generator=gen)
            cache = engine.clean(batch)
            key = f"{arch}.{opt_name}"
            out[f"{key}.clean"] = cache.logits
            singles = [
                [(layer, head)] for layer in range(geo.n_layers) for head in range(geo.n_heads)
            ]
            for mu_name, mu in (("mu", mu_head), ("mupos", mu_pos)):
                at = f"{key}.{mu_name}"
                for name, sets in (("fast", SETS), ("single", singles)):
                    dec = engine.decompose(batch, sets, mu, cache=cache)
                    out[f"{at}.{name}.beta"], out[f"{at}.{name}.gamma"] = dec.beta, dec.gamma
                dec = engine.decompose(batch, SETS, mu, cache=cache, record_layers=True)
                out[f"{at}.rec.beta"] = dec.beta
                dec = engine.decompose_naive(batch, SETS, mu)
                out[f"{at}.naive.beta"], out[f"{at}.naive.gamma"] = dec.beta, dec.gamma
                out[f"{at}.ablate"] = engine.ablate(cache, HEADS, mu)
                out[f"{at}.ablate1"] = engine.ablate(cache, singles, mu)
            for score in ("directional", "cdt_ratio", "ablation"):
                out[f"{key}.score.{score}"] = score_heads(
                    engine, [batch], mu_head, kind=score, progress=False
                )[0]
    return {name: t.contiguous() for name, t in out.items()}


@pytest.mark.usefixtures("one_thread")
def test_engine_outputs_equal_the_golden_values() -> None:
    golden = load_file(GOLDEN)
    got = engine_outputs()
    assert sorted(got) == sorted(golden)
    with safe_open(GOLDEN, "pt") as fh:  # the torch that wrote them
        exact = fh.metadata()["torch"] == torch.__version__
    for name, want in golden.items():
        if exact:
            assert torch.equal(got[name], want), name
        else:
            assert torch.allclose(got[name], want, rtol=1e-4, atol=1e-6), name


if __name__ == "__main__":  # write the golden values (with the engine to compare against)
    torch.set_num_threads(1)
    save_file(
        engine_outputs(), GOLDEN if len(sys.argv) < 2 else sys.argv[1], {"torch": torch.__version__}
    )
    print(f"wrote {GOLDEN}")
