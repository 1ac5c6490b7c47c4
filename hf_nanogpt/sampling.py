"""nanoGPT-compatible sampling: `hf-nanogpt sample MODEL` prints what nanoGPT's sample.py prints.

Three things make the output identical to nanoGPT's for the same weights and seed:

1. The decoding loop is nanoGPT's `GPT.generate`: crop the context to block_size, logits of the last
   position / temperature, keep the top_k, softmax, one `torch.multinomial` draw per token. Unlike
   transformers' generate(), it runs past block_size by sliding the window.
2. The random stream is in the same place. sample.py seeds, then builds `GPT(config)`, whose random
   initialisation draws from the generator before the checkpoint overwrites it; `replay_nanogpt_init_rng`
   makes the same draws (on throwaway tensors, one at a time) so the first sample starts from the same
   generator state.
3. By default every step recomputes the window without a KV cache, as nanoGPT does: cached attention
   rounds differently (~1e-6), which can flip a draw that lands on a probability boundary. `use_cache=True`
   is faster and matches in distribution, not draw for draw.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_nanogpt import NanoGPTConfig
from .modeling_nanogpt import CACHE_NAME
from .tokenization import encode_text


def replay_nanogpt_init_rng(config: NanoGPTConfig) -> None:
    """Advance torch's CPU generator exactly as nanoGPT's `GPT(config)` does when it initialises.

    nanoGPT (model.py): building the modules draws their default torch inits (Embedding: normal_,
    Linear: kaiming_uniform_ + uniform_ bias); `self.apply(_init_weights)` then redraws normal_ for every
    Embedding and Linear (children first, and wte twice since lm_head shares it); finally each c_proj
    weight is drawn once more with the scaled std. Tensors are made and dropped one at a time.
    """
    C, V, T, L, bias = config.n_embd, config.vocab_size, config.block_size, config.n_layer, config.bias
    block_linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    # 1. module construction, in nanoGPT's order: wte, wpe, h[i], ln_f (no draws), lm_head
    nn.Embedding(V, C)
    nn.Embedding(T, C)
    for _ in range(L):
        for fan_in, fan_out in block_linears:
            nn.Linear(fan_in, fan_out, bias=bias)
    nn.Linear(C, V, bias=False)
    # 2. self.apply(self._init_weights): normal_ on every Embedding and Linear weight, in module order
    torch.empty(V, C).normal_()
    torch.empty(T, C).normal_()
    for _ in range(L):
        for fan_in, fan_out in block_linears:
            torch.empty(fan_out, fan_in).normal_()
    torch.empty(V, C).normal_()  # lm_head, the same tensor as wte
    # 3. the scaled init of c_proj.weight (attn, then mlp, per layer)
    for _ in range(L):
        torch.empty(C, C).normal_()
        torch.empty(C, 4 * C).normal_()


@torch.no_grad()
def nanogpt_generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = False,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """nanoGPT's GPT.generate on a NanoGPTForCausalLM: idx (b, t) -> (b, t + max_new_tokens)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}.")
    block_size = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and idx.size(1) <= block_size:
            step_input = idx if cache is None else idx[:, -1:]
            out = model(step_input, cache=cache, use_cache=True, logits_to_keep=1)
            cache = getattr(out, CACHE_NAME)
        else:
            # if the sequence context is growing too long we must crop it at block_size
            idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
            out = model(idx_cond, use_cache=False, logits_to_keep=1)
        logits = out.logits[:, -1, :].float() / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("Inf")
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1)
        idx = torch.cat((idx, idx_next), dim=1)
        if on_token is not None:
            on_token(idx_next)
    return idx


def read_start(start: str) -> str:
    """sample.py's --start: the text itself, or FILE:path to read it from a file."""
    if start.startswith("FILE:"):
        with open(start[5:], encoding="utf-8") as f:
            return f.read()
    return start


def sample(
    model: nn.Module,
    tokenizer,
    start: str = "\n",
    num_samples: int = 10,
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 1337,
    use_cache: bool = False,
    write: Callable[[str], None] = print,
) -> list[str]:
    """Everything sample.py does after loading: seed, replay the init draws, encode `start`, and print
    `num_samples` samples, each followed by a line of dashes. Returns the decoded samples."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)
    replay_nanogpt_init_rng(model.config)
    device = next(model.parameters()).device
    start_ids = encode_text(tokenizer, read_start(start), "--start")
    if not start_ids:
        raise ValueError("--start encodes to no tokens: give at least one character.")
    x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]
    samples = []
    for _ in range(num_samples):
        y = nanogpt_generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k, use_cache=use_cache)
        text = tokenizer.decode(y[0].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        samples.append(text)
        write(text)
        write("---------------")
    return samples


__all__ = ["nanogpt_generate", "read_start", "replay_nanogpt_init_rng", "sample"]
