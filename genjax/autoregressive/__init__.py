"""Autoregressive transformers: an exact likelihood by the chain rule over tokens."""
from genjax.autoregressive.decode import (
    generate,
    process_logits,
    sample_logits,
    speculative_generate,
    top_k_logits,
    top_p_logits,
)
from genjax.autoregressive.lm import make_lm

__all__ = [
    "generate",
    "make_lm",
    "process_logits",
    "sample_logits",
    "speculative_generate",
    "top_k_logits",
    "top_p_logits",
]
