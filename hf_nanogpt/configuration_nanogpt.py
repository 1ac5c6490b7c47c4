"""Configuration of Karpathy's nanoGPT GPT as a transformers model.

Field names are nanoGPT's (`GPTConfig` in nanoGPT's model.py); `attribute_map` exposes them under the
standard transformers names (hidden_size, num_attention_heads, ...) that caches, generate() and the
attention masks read.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# activation_function -> the `approximate` argument of torch.nn.GELU
ACTIVATIONS = {
    "gelu": "none",  # exact GELU: nanoGPT's nn.GELU()
    "gelu_new": "tanh",  # tanh approximation: OpenAI's GPT-2 (transformers' "gelu_new")
    "gelu_pytorch_tanh": "tanh",  # the same formula under the name transformers gives its torch kernel
}


@strict
class NanoGPTConfig(PreTrainedConfig):
    r"""
    Configuration of a nanoGPT GPT model.

    Args:
        vocab_size: number of token embeddings (nanoGPT pads GPT-2's 50257 up to 50304, a multiple of 64).
        block_size: the context length: the number of learned position embeddings.
        n_layer, n_head, n_embd: depth, attention heads per layer, and width (a multiple of n_head).
        dropout: dropout probability on embeddings, attention weights and residual branches, in [0, 1).
        bias: whether Linear and LayerNorm layers carry a bias (GPT-2 style) or not (a bit better and faster).
        activation_function: "gelu" (exact, nanoGPT's) or "gelu_new" (tanh approximation, OpenAI GPT-2's).
        layer_norm_epsilon: epsilon of every LayerNorm.
        initializer_range: std of the normal init; residual projections get std / sqrt(2 * n_layer).
        tie_word_embeddings: share `lm_head.weight` with `transformer.wte.weight`, as nanoGPT does.

    Example:

    ```python
    >>> from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
    >>> config = NanoGPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, bias=False)
    >>> model = NanoGPTForCausalLM(config)
    ```
    """

    model_type = "nanogpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the KV cache under either release's name
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "max_position_embeddings": "block_size",
    }

    vocab_size: int = 50304  # GPT-2's 50257 padded up to the nearest multiple of 64 for efficiency
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float | int = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster
    activation_function: str = "gelu"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # Checked here and not only in validate_architecture: strict re-raises that one's ValueError as a
        # StrictDataclassClassValidationError, while users and tests expect a plain ValueError.
        self.validate_architecture()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Reject values nanoGPT could not build, naming the field and the value (runs at init and save)."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"NanoGPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"NanoGPTConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}): "
                f"each head gets n_embd / n_head dimensions. "
                f"Pick e.g. n_embd={self.n_head * max(1, self.n_embd // self.n_head)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NanoGPTConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"NanoGPTConfig.activation_function must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.activation_function!r}."
            )
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"NanoGPTConfig.layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"NanoGPTConfig.initializer_range must be >= 0, got {self.initializer_range!r}.")


__all__ = ["NanoGPTConfig"]
