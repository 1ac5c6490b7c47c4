"""Karpathy's nanoGPT GPT as a transformers causal LM.

The module tree and parameter names are nanoGPT's (model.py), so a nanoGPT state dict loads with
`load_state_dict` and no renaming:

    transformer.wte / wpe / drop / h.{i}.(ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj) / ln_f
    lm_head (tied to transformer.wte)

What transformers adds around it: a KV cache (any `Cache`), padding masks and position ids for batched
generation, the attention backend chosen through `ALL_ATTENTION_FUNCTIONS` (eager, sdpa, flex, flash),
gradient checkpointing, output capturing, and the loss shifted inside the model.

This file is also the remote code saved next to the weights: it imports only torch, transformers and
its sibling configuration file, and it runs on whatever transformers 5.x release the loading side has.
"""

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import (
    GenericForQuestionAnswering,
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_nanogpt import ACTIVATIONS, NanoGPTConfig

try:  # continuous batching (generate_batch, `transformers serve`, `hf-nanogpt serve`) hands the model this cache
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
except ImportError:  # a release without continuous batching
    PagedAttentionCache = None

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: the argument generate() passes to
# forward, the argument of create_causal_mask and the field of the output classes (the old name is deprecated,
# to be removed in 5.40). Remote code runs on whatever release the user has, so forward accepts either name and
# passes the cache on, and returns it, under the name of the release that runs it.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

# Continuous batching packs every request's new tokens into one row (batch 1) and keeps their keys and values in a
# PagedAttentionCache, with the read/write indices and the 4-D mask it prepared passed as keyword arguments. Which
# side writes the cache moved between releases, and the model follows the release it runs on, as Llama there does:
# later releases have the model call `cache.update(k, v, layer_idx, kwargs=kwargs)` like any cache; earlier ones
# (5.18 ...) left it to the paged attention function, which takes the cache from its `cache` keyword argument.
PAGED_UPDATE_IN_MODEL = (
    PagedAttentionCache is not None and "kwargs" in inspect.signature(PagedAttentionCache.update).parameters
)


def is_paged(cache) -> bool:
    return PagedAttentionCache is not None and isinstance(cache, PagedAttentionCache)

# Auto class -> our class: registered by `import hf_nanogpt`, and written as the `auto_map` of every saved folder,
# so that a causal LM folder also loads as a classifier through remote code (the heads start from its trunk)
AUTO_MAP = {
    "AutoModel": "NanoGPTModel",
    "AutoModelForCausalLM": "NanoGPTForCausalLM",
    "AutoModelForSequenceClassification": "NanoGPTForSequenceClassification",
    "AutoModelForTokenClassification": "NanoGPTForTokenClassification",
    "AutoModelForQuestionAnswering": "NanoGPTForQuestionAnswering",
}


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's manual attention. q (B, nh, T, hs), k/v (B, nh, S, hs); mask additive (B, 1, T, S)."""
    att = torch.matmul(query, key.transpose(-2, -1)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        att = att + attention_mask
    att = F.softmax(att, dim=-1, dtype=torch.float32).to(query.dtype)
    att = F.dropout(att, p=dropout, training=module.training)
    y = torch.matmul(att, value)  # (B, nh, T, hs)
    return y.transpose(1, 2).contiguous(), att  # (B, T, nh, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: NanoGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.dropout = config.dropout
        # key, query, value projections for all heads, but in a batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True  # read by _init_weights: nanoGPT's scaled init
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = hidden_states.shape  # batch size, sequence length, embedding dimensionality (n_embd)
        # q, k, v for all heads at once, split as nanoGPT does (views, no copy). Written for vLLM's packed-QKV fuser,
        # which shards c_attn by heads for tensor parallelism: it traces the sizes as a literal 3-tuple of ints (C
        # from .shape is not one) and rewrites them to one rank's share, so the views take that rank's heads (-1)
        q, k, v = self.c_attn(hidden_states).split((self.n_embd, self.n_embd, self.n_embd), dim=-1)
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)

        if is_paged(cache):
            if PAGED_UPDATE_IN_MODEL:  # reads the indices from kwargs, and picks this layer's entries into it
                k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
            else:  # the release's paged attention function writes and reads the cache
                kwargs["cache"] = cache
        elif cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, S, hs), S = cached + T

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        y, att = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )  # y: (B, T, nh, hs)
        y = y.reshape(B, T, -1)  # re-assemble all head outputs side by side: (B, T, C)
        y = self.resid_dropout(self.c_proj(y))
        return y, att


class MLP(nn.Module):
    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=ACTIVATIONS[config.activation_function])
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(GradientCheckpointingLayer):
    def __init__(self, config: NanoGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_out, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states


class NanoGPTPreTrainedModel(PreTrainedModel):
    config: NanoGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": Block, "attentions": CausalSelfAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # nanoGPT: normal(0, 0.02) for Linear and Embedding, zero biases, LayerNorm (1, 0) ...
        super()._init_weights(module)
        # ... and the residual projections scaled per GPT-2 paper. Done on the Linear itself: transformers
        # never calls _init_weights on modules that hold no parameters of their own (attn, mlp).
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Only the saved class lands in auto_map; remote-code users expect every Auto class to resolve.
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                **{auto: f"modeling_nanogpt.{name}" for auto, name in AUTO_MAP.items()},
            }
        return super().save_pretrained(save_directory, *args, **kwargs)


class NanoGPTModel(NanoGPTPreTrainedModel):
    """The transformer trunk: nanoGPT's `transformer` ModuleDict (wte, wpe, drop, h, ln_f)."""

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding):
        self.wte = value

    def _check_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        positions_given: bool,
        past_length: int,
        length: int,
    ):
        """Clear errors where nn.Embedding would raise an IndexError (CPU) or a device-side assert (CUDA), and
        where a cache lost on the way (see CACHE_NAME) would silently give wrong tokens."""
        block_size, total = self.config.block_size, past_length + length
        # a row read as one sequence, cached tokens included, must fit the position embedding; a packed row
        # (several sequences, each restarting its given position_ids at 0, no cache) may be longer
        if total > block_size and (not positions_given or past_length > 0):
            raise ValueError(
                f"Sequence length {total} (cached tokens plus new tokens) exceeds the model's block_size "
                f"{block_size}: nanoGPT has no position embedding past it. Shorten the prompt (it can be cut "
                f"from the left) or lower max_new_tokens."
            )
        two_d = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2  # continuous batching: 4-D
        if two_d and attention_mask.shape[-1] != total:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} tokens, but the KV cache holds {past_length} "
                f"and the input has {length}: a 2-D mask covers the cached and the new tokens. If generate() "
                f"called the model, the KV cache did not reach it (this model code reads it as `cache` or "
                f"`past_key_values`): use an hf_nanogpt release that supports this transformers release."
            )
        if position_ids.numel() == 0:  # an empty input: nothing to look up
            return
        bounds = [position_ids.min(), position_ids.max()]
        if input_ids is not None:
            bounds += [input_ids.min(), input_ids.max()]
        pos_low, pos_high, *id_bounds = torch.stack(bounds).tolist()  # one device sync for all bounds
        if pos_low < 0 or pos_high >= block_size:
            raise ValueError(
                f"position_ids must be in [0, {block_size}) (block_size {block_size}: nanoGPT has no position "
                f"embedding past it), got {pos_low} to {pos_high}. Shorten the input."
            )
        if id_bounds and (id_bounds[0] < 0 or id_bounds[1] >= self.config.vocab_size):
            raise ValueError(
                f"Token ids must be in [0, vocab_size={self.config.vocab_size}), got ids from {id_bounds[0]} to "
                f"{id_bounds[1]}. Was the input encoded with this model's tokenizer?"
            )

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        cache = one_cache(cache, past_key_values, kwargs)
        # a cache serves decoding; in training it would only copy every key and value (config.use_cache
        # is True by default, so it must not decide alone), and recomputed checkpointed blocks would fill it twice
        new_cache = use_cache and cache is None and not self.training
        if new_cache:
            cache = DynamicCache(config=self.config)
        if self.training and self.h[0].gradient_checkpointing:
            cache = None

        t = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        paged = is_paged(cache)  # continuous batching: one packed row, positions and mask given (see is_paged)
        past_length = cache.get_seq_length() if cache is not None and not paged else 0
        given_position_ids = position_ids
        if position_ids is None:
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            position_ids = (torch.arange(t, device=device) + past_length).unsqueeze(0)  # (1, t)
        if not torch.compiler.is_compiling():  # data-dependent checks would break the graph
            self._check_inputs(
                input_ids, attention_mask, position_ids, given_position_ids is not None, int(past_length), t
            )

        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.wpe(position_ids)  # position embeddings of shape (b or 1, t, n_embd)
        hidden_states = self.drop(inputs_embeds + pos_emb)

        causal_mask = attention_mask if paged else create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            # only position ids the caller gave can describe packed sequences; our own arange never does,
            # and leaving it out spares the mask code its packed-sequence scan on every step
            position_ids=given_position_ids,
            # the mask code looks for packed sequences only without a cache; one made here is empty (no change
            # to the mask's size) and must not turn a packed row into one long sequence
            **{CACHE_NAME: None if new_cache else cache},
        )
        for block in self.h:
            hidden_states = block(hidden_states, attention_mask=causal_mask, cache=cache, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_NAME: cache})


def one_cache(cache: Cache | None, past_key_values: Cache | None, kwargs: dict) -> Cache | None:
    """The KV cache passed under either name (see CACHE_NAME). Raises rather than let a cache go unused."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Got two KV caches, `cache` and `past_key_values`: pass one (they are the same argument).")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, Cache) and not is_paged(cache):
        raise TypeError(
            f"The KV cache must be a transformers Cache (DynamicCache, StaticCache, ...), got {type(cache).__name__}: "
            f"transformers 5 no longer takes tuples of tensors."
        )
    unknown = [name for name, value in kwargs.items() if isinstance(value, Cache)]
    if unknown:
        raise TypeError(
            f"A KV cache came as `{unknown[0]}=`, which this model code does not read (it reads `cache` or "
            f"`past_key_values`): use an hf_nanogpt release that supports this transformers release."
        )
    return cache


class NanoGPTForCausalLM(NanoGPTPreTrainedModel, GenerationMixin):
    """nanoGPT's `GPT`: the trunk plus `lm_head`, whose weight is tied to `transformer.wte.weight`."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: NanoGPTConfig):
        super().__init__(config)
        self.transformer = NanoGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        cache / past_key_values (`Cache`, *optional*):
            The KV cache, under either name: transformers 5.24 and later pass `cache`, earlier releases
            `past_key_values`. The output carries it under the running release's name.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Usually the input ids themselves: they are shifted inside the model, so position i predicts
            labels[i + 1]; -100 is ignored. nanoGPT-style targets, already shifted, go in `shift_labels`.
        logits_to_keep (`int` or `torch.Tensor`):
            Compute logits only for the last `logits_to_keep` positions (0: all). generate() passes 1, as
            nanoGPT's inference path computes `lm_head(x[:, [-1], :])`.
        """
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            past_key_values=past_key_values,  # the trunk takes either name and checks them once (one_cache)
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if kwargs.get("shift_labels") is not None:  # a slice such as nanoGPT's y = ids[:, 1:] (the loss views it)
            kwargs["shift_labels"] = kwargs["shift_labels"].contiguous()
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )


# GPT-2's task heads on the nanoGPT trunk. Their forward and loss are transformers' own (the Generic classes
# Llama, Qwen and others share); only the trunk is built here, under nanoGPT's name `transformer`, so a causal
# LM checkpoint's weights load into it and the head (`score`, `qa_outputs`) starts fresh, as with GPT-2.


class NanoGPTForSequenceClassification(GenericForSequenceClassification, NanoGPTPreTrainedModel):
    """A linear `score` on the hidden state of each row's last non-pad token (config.pad_token_id; a batch of
    more than one row needs it), as GPT2ForSequenceClassification."""

    base_model_prefix = "transformer"

    def __init__(self, config: NanoGPTConfig):
        NanoGPTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.transformer = NanoGPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()


class NanoGPTForTokenClassification(GenericForTokenClassification, NanoGPTPreTrainedModel):
    """A linear `score` on every token's hidden state, after dropout (config.classifier_dropout, else 0.1, as
    GPT-2)."""

    base_model_prefix = "transformer"

    def __init__(self, config: NanoGPTConfig):
        NanoGPTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.transformer = NanoGPTModel(config)
        classifier_dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(0.1 if classifier_dropout is None else classifier_dropout)
        self.score = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()


class NanoGPTForQuestionAnswering(GenericForQuestionAnswering, NanoGPTPreTrainedModel):
    """Extractive QA: `qa_outputs` gives each token a start and an end logit, as GPT2ForQuestionAnswering."""

    base_model_prefix = "transformer"

    def __init__(self, config: NanoGPTConfig):
        NanoGPTPreTrainedModel.__init__(self, config)
        self.transformer = NanoGPTModel(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:  # the Generic class's names another trunk's attribute
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding):
        self.transformer.wte = value


__all__ = [
    "NanoGPTForCausalLM",
    "NanoGPTForQuestionAnswering",
    "NanoGPTForSequenceClassification",
    "NanoGPTForTokenClassification",
    "NanoGPTModel",
    "NanoGPTPreTrainedModel",
]
