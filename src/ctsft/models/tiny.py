"""Tiny random models built from a config: no weights, every architecture, for unit tests."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from ctsft.errors import CtsftError

TINY_VOCAB = 1000


def tiny_config(arch: str, num_labels: int = 3) -> PretrainedConfig:
    """2 layers, 4 query heads, hidden 32; Qwen2 and Gemma3 use grouped-query attention."""
    common = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    if arch == "xlmr":
        # pad id 0 as in the tiny tokenizer (XLM-R's positions start after the padding index);
        # two token types because the tiny tokenizer marks the second text of a pair with 1
        return XLMRobertaConfig(
            **common, intermediate_size=64, max_position_embeddings=130, num_labels=num_labels,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2,
            pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )  # fmt: skip
    if arch == "bert":
        return BertConfig(
            **common, intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
    if arch == "gpt2":
        # GPT-2's own names; tied lm_head as in GPT-2; no dropout; special ids of the tiny tokenizer
        return GPT2Config(
            vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=2,
            eos_token_id=3,
        )  # fmt: skip
    decoder = dict(
        **common, intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=False
    )
    if arch == "llama":
        return LlamaConfig(**decoder, num_key_value_heads=4)
    if arch == "qwen2":
        return Qwen2Config(**decoder, num_key_value_heads=2)
    if arch == "gemma3":
        return Gemma3TextConfig(
            **decoder, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        )  # fmt: skip
    raise CtsftError(
        f"unknown tiny architecture {arch!r}: choose bert, xlmr, llama, qwen2, gemma3 or gpt2"
    )


#: BERT, the decoders and GPT-2 (what the family tests sweep); `xlmr` is the second encoder layout.
TINY_ARCHES = ("bert", "llama", "qwen2", "gemma3", "gpt2")
TINY_ENCODERS = ("bert", "xlmr")


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny model (eager attention, float32), reproducible for a seed."""
    torch.manual_seed(seed)
    config = tiny_config(arch)
    config._attn_implementation = "eager"
    if arch == "bert":
        model = BertForSequenceClassification(config)
    elif arch == "xlmr":
        model = XLMRobertaForSequenceClassification(config)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()
