"""PEFT LoRA on the attention projections, injected in place.

`inject_adapter_in_model` keeps the module tree of the Hugging Face model (unlike `PeftModel`,
whose `.model` attribute would shadow the causal LM's backbone), so `TaskModel.forward` runs
unchanged. A transfer is saved as a PEFT adapter folder (`ctsft.models.checkpoint.save_adapter`,
loadable by `peft.PeftModel.from_pretrained`), and `merge_lora` (there too, as loading merges it)
folds B @ A into the base weights once training is done.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ctsft.errors import CtsftError


def lora_target_modules(hf_model: nn.Module, adapter: Any) -> list[str]:
    """Qualified names of every layer's q/k/v/o `nn.Linear` (from the architecture adapter)."""
    names = {id(m): n for n, m in hf_model.named_modules()}
    out = []
    for layer in adapter.layers():
        for proj in (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o):
            if id(proj) not in names:  # a view into a fused projection (GPT-2's c_attn)
                raise CtsftError(
                    f"method lora: {type(hf_model).__name__} has no separate q/k/v/o modules "
                    "(a fused attention projection): LoRA is not supported for this model "
                    "family; choose another method"
                )
            out.append(names[id(proj)])
    return out


def lora_count(hf_model: nn.Module, modules: list[str], rank: int) -> int:
    """Trainable scalars of rank-`rank` LoRA on `modules`: r * (in + out) per projection."""
    mods = dict(hf_model.named_modules())
    return sum(rank * (mods[n].in_features + mods[n].out_features) for n in modules)


def choose_rank(hf_model: nn.Module, modules: list[str], target: int, max_rank: int = 512) -> int:
    """The rank >= 1 whose LoRA count is closest to `target` (ties: the smaller rank)."""
    per_rank = lora_count(hf_model, modules, 1)
    best = max(1, min(max_rank, round(target / per_rank)))
    candidates = [r for r in (best - 1, best, best + 1) if r >= 1]
    return min(candidates, key=lambda r: (abs(r * per_rank - target), r))


def inject_lora(
    hf_model: nn.Module, modules: list[str], rank: int, alpha_over_rank: float, dropout: float
) -> Any:
    """Add LoRA layers in place; only their A/B matrices stay trainable. Returns the
    `LoraConfig` (the adapter folder's `adapter_config.json`)."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise CtsftError(f"method.rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha_over_rank * rank,
        lora_dropout=dropout,
        target_modules=list(modules),
        bias="none",
    )
    for param in hf_model.parameters():
        param.requires_grad_(False)
    inject_adapter_in_model(config, hf_model)
    for name, param in hf_model.named_parameters():
        param.requires_grad_("lora_" in name)
    return config
