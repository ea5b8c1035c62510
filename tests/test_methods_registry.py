"""Methods as a registry: a method is a YAML naming a registered kind; no code names methods.

A method added as one YAML under a new name (CT-SFT with frozen k/v under grouped-query attention)
composes, plans, trains two steps and passes the workflow's config check; a new kind added as one
registered function is used by a YAML without any other code knowing its name.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from ctsft import workflow_config as wc
from ctsft.config import compose
from ctsft.config_files import method_needs_circuit, method_trains
from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.models import load_task_model
from ctsft.train import TrainConfig, Trainer, build_plan
from ctsft.train import methods as registry
from ctsft.train.methods import TrainEntry

REPO = Path(__file__).resolve().parents[1]
CIRCUIT = {
    "model": "tiny", "task": "nusax", "proxy": "ind", "k": 2, "n_heads_total": 8, "score_kind": "directional",
    "circuit": [[0, 1], [1, 2]], "near_zero": [[0, 0], [1, 0]], "random": [[0, 2], [1, 1]],
    "scores_sha256": "0" * 64, "provenance": {},
}  # fmt: skip
FROZEN_KV = """\
# CT-SFT that leaves the shared key/value heads of grouped-query attention untouched.
defaults:
  - ctsft
  - _self_
name: ctsft_frozen_kv
kv_policy: frozen
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of config/hydra with one more method YAML, used through $CTSFT_CONFIG_DIR."""
    folder = tmp_path / "hydra"
    shutil.copytree(REPO / "config" / "hydra", folder)
    (folder / "method" / "ctsft_frozen_kv.yaml").write_text(FROZEN_KV)
    monkeypatch.setenv(wc.CONFIG_DIR_ENV, str(folder))
    return folder


def test_a_method_from_a_yaml_alone_plans_and_trains(
    config_dir: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    cfg = compose(["model=tiny_qwen2", "method=ctsft_frozen_kv", "train=tiny"])
    assert cfg.method.kind == "heads" and cfg.method.kv_policy == "frozen"
    assert method_trains(cfg.method) and method_needs_circuit(cfg.method)
    assert "ctsft_frozen_kv" in registry.METHODS and "ctsft_frozen_kv" in registry.HEAD_METHODS

    model = load_task_model(tiny_model_dirs["tiny_qwen2"], "nusax", max_length=16)
    plan = build_plan(model.hf, model.adapter, cfg.method, CIRCUIT)
    shared = build_plan(model.hf, model.adapter, compose(["model=tiny_qwen2"]).method, CIRCUIT)
    names = {e.name for e in plan.entries}
    assert plan.method == "ctsft_frozen_kv" and plan.heads == [(0, 1), (1, 2)]
    assert any("q_proj" in n for n in names) and any("o_proj" in n for n in names)
    assert not any("k_proj" in n or "v_proj" in n for n in names)
    assert any("k_proj" in e.name for e in shared.entries)  # the stock ctsft does train k/v
    assert 0 < plan.trainable < shared.trainable

    rows = load_split("nusax", "ind", "train").to_list()[:8]
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    trainer = Trainer(model, plan, TrainConfig(epochs=1, max_steps=2, batch_size=4), seed=0)
    trainer.fit(rows, progress=False)
    trainer.finish()
    assert trainer.step == 2
    after = dict(model.hf.named_parameters())
    k_weights = [n for n in after if "k_proj.weight" in n]
    assert k_weights and all(torch.equal(before[n], after[n]) for n in k_weights)
    q0 = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q0], after[q0])


def test_the_workflow_check_reads_the_new_yaml(config_dir: Path) -> None:
    variant = {"name": "frozen_kv", "overrides": ["method=ctsft_frozen_kv"]}
    assert wc.method_facts("ctsft_frozen_kv", variant["overrides"]) == (True, True)
    config = {
        "methods": [variant],
        "experiments": [{"task": "nusax", "proxy": "ind", "targets": ["jav"]}],
        "model": "tiny_bert",
    }
    with pytest.raises(Exception, match="add circuit: true"):
        wc.check_config(config)
    variant["circuit"] = True
    wc.check_config(config)


def test_a_new_kind_is_one_registered_function(
    config_dir: Path, tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.KINDS, "first_norm", registry.KINDS["none"])  # restored after

    @registry.register_kind("first_norm")
    def first_norm(plan: registry.TrainablePlan, inputs: registry.PlanInputs) -> None:
        plan.entries = [TrainEntry(next(iter(inputs.adapter.norm_parameters())))]

    (config_dir / "method" / "one_norm.yaml").write_text("name: one_norm\nkind: first_norm\n")
    cfg = compose(["model=tiny_bert", "method=one_norm"])
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax", max_length=16)
    plan = build_plan(model.hf, model.adapter, cfg.method)
    norm = next(iter(model.adapter.norm_parameters()))
    assert [e.name for e in plan.entries] == [norm]
    assert plan.trainable == dict(model.hf.named_parameters())[norm].numel()
    assert wc.method_facts("one_norm", []) == (False, True)


def test_an_unknown_kind_or_method_is_one_line(config_dir: Path) -> None:
    (config_dir / "method" / "odd.yaml").write_text("name: odd\nkind: everything\n")
    with pytest.raises(CtsftError, match=r"^method 'odd' has kind 'everything': set method.kind"):
        method_trains(compose(["method=odd"]).method)
    with pytest.raises(CtsftError, match=r"^unknown method 'nope': choose one of ctsft,"):
        method_trains({"name": "nope"})


def test_no_code_dispatches_on_a_method_name() -> None:
    """No comparison in src/ tests a method's name (`method == "lora"`, `in HEAD_METHODS`): the
    kind does. The report is exempt: its tables compare CT-SFT with the paper's named baselines."""
    names = set(wc.method_names())
    offenders = []
    for path in sorted((REPO / "src" / "ctsft").rglob("*.py")):
        if "report" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            literals = [
                c.value
                for o in operands
                for c in ast.walk(o)
                if isinstance(c, ast.Constant) and c.value in names
            ]
            named = [o.id for o in operands if isinstance(o, ast.Name) and o.id.endswith("METHODS")]
            if literals or named:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_random_heads_draws_its_heads_per_transfer_seed(tiny_model_dirs: dict[str, Path]) -> None:
    """`random_heads` composed for a run draws k heads with the run's seed: two seeds, two sets
    (so the spread over seeds covers which heads were picked), one seed, the same set, and the
    plan records them; with method.seed null it trains the circuit file's one draw."""
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax", max_length=16)
    plans = {}
    for seed in (0, 1, 2):
        cfg = compose(["model=tiny_bert", "method=random_heads", f"seed={seed}"])
        assert cfg.method.seed == seed
        plans[seed] = build_plan(model.hf, model.adapter, cfg.method, CIRCUIT)
    drawn = {seed: plan.heads for seed, plan in plans.items()}
    assert all(len(heads) == 2 == len(set(heads)) for heads in drawn.values())
    assert len({tuple(heads) for heads in drawn.values()}) > 1, drawn
    assert drawn[1] == registry.draw_heads(2, 2, 4, 1) == sorted(drawn[1])
    assert plans[1].to_dict()["heads"] == [list(h) for h in drawn[1]]
    again = build_plan(model.hf, model.adapter, compose(["model=tiny_bert", "method=random_heads", "seed=1"]).method, CIRCUIT)  # fmt: skip
    assert again.heads == drawn[1]
    legacy = compose(["model=tiny_bert", "method=random_heads", "method.seed=null"]).method
    assert build_plan(model.hf, model.adapter, legacy, CIRCUIT).heads == [(0, 2), (1, 1)]
