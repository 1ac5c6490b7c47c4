"""The model a run starts from (init_from): a new one, a checkpoint's, GPT-2, a model folder or a nanoGPT
checkpoint; nanoGPT's dropout override and block-size crop; the embedding grown for the chat format's markers."""

import json
from pathlib import Path

import torch

from .checkpoint import CHECKPOINTS, MODEL_CONFIG_DIR, latest_checkpoint
from .config import TrainConfig


def build_model(cfg: TrainConfig, vocab_size: int | None):
    """The model init_from asks for, a base-model name for the card, and the checkpoint to resume from.
    Raises before any work when init_from is not usable. (The tokenizer is always the data's: it is
    what the ids on disk mean.)"""
    from transformers import AutoModelForCausalLM

    from .. import NanoGPTConfig, NanoGPTForCausalLM

    init = cfg.init_from
    if init == "scratch":
        torch.manual_seed(cfg.seed)
        config = NanoGPTConfig(
            vocab_size=vocab_size or 50304,  # GPT-2's 50257 padded up to a multiple of 64
            block_size=cfg.block_size,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            dropout=cfg.dropout,
            bias=cfg.bias,
        )
        return NanoGPTForCausalLM(config), None, None
    if init == "resume":
        ckpt = latest_checkpoint(Path(cfg.out_dir))
        if ckpt is None:
            raise FileNotFoundError(f"init_from=resume: no complete checkpoint in {Path(cfg.out_dir) / CHECKPOINTS}.")
        config = NanoGPTConfig.from_pretrained(ckpt / MODEL_CONFIG_DIR)
        config.dropout = cfg.dropout
        with torch.device("meta"):
            model = NanoGPTForCausalLM(config)
        model = model.to_empty(device="cpu")  # filled by accelerator.load_state
        model.tie_weights()
        return model, None, ckpt
    path = Path(init)
    if (
        init.startswith("gpt2")
        and not path.exists()
        or (path / "config.json").is_file()
        and _model_type(path) == "gpt2"
    ):
        from ..conversion.gpt2 import gpt2_as_nanogpt

        model, _ = gpt2_as_nanogpt(init)
        return _set_dropout(model, cfg.dropout), init, None
    if (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if model.config.model_type != "nanogpt":
            raise ValueError(f"init_from={init}: model_type {model.config.model_type!r}; expected nanogpt or gpt2.")
        return _set_dropout(model, cfg.dropout), str(init), None
    if path.is_file() and path.suffix == ".pt" or (path / "ckpt.pt").is_file():
        from ..conversion.nanogpt import model_from_state_dict, read_nanogpt

        ckpt_path, _, config, state_dict = read_nanogpt(path)
        model = model_from_state_dict({k: v.clone() for k, v in state_dict.items()}, config)
        return _set_dropout(model, cfg.dropout), str(ckpt_path), None
    raise ValueError(
        f"init_from={init!r} is neither 'scratch', 'resume', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), "
        f"a model folder (with config.json) nor a nanoGPT out_dir or ckpt.pt."
    )


def _model_type(folder: Path) -> str | None:
    return json.loads((folder / "config.json").read_text()).get("model_type")


def _set_dropout(model, dropout: float):
    """nanoGPT's override_args: the dropout of this run, not of the checkpoint."""
    model.config.dropout = dropout
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = dropout
    return model


def crop_block_size(model, block_size: int) -> None:
    """nanoGPT's model surgery: keep the first block_size position embeddings."""
    if block_size > model.config.block_size:
        raise ValueError(
            f"block_size {block_size} is larger than the model's {model.config.block_size}: a learned position "
            f"embedding cannot be extended. Use block_size <= {model.config.block_size}."
        )
    if block_size < model.config.block_size:
        wpe = model.transformer.wpe
        wpe.weight = torch.nn.Parameter(wpe.weight.data[:block_size].clone())
        wpe.num_embeddings = block_size
        model.config.block_size = block_size


def grow_for_chat(model, tokenizer, seed: int) -> str | None:
    """Chat data's tokenizer is a base model's plus the turn markers (chat.py), after its ids. Where the markers
    have no rows in the model (a trained BPE's model; GPT-2's own 50,257 rows, init_from=gpt2; not nanoGPT's
    padded 50,304, which have room), the tied wte/lm_head grows to `vocab_rows` with transformers'
    resize_token_embeddings: the new rows are drawn around the mean of the existing ones (mean_resizing, with
    1e-9 of their covariance, so all but equal to the mean), which leaves the model's next-token distribution
    over the old ids almost unchanged. Returns a line saying so, or None where nothing grew (or where ids other
    than the markers lie past the rows: the caller's vocabulary check then refuses the data). Seeded, so every
    process grows the same rows."""
    from ..chat import CHAT_TOKENS, vocab_rows

    rows = model.config.vocab_size
    beyond = set(range(rows, len(tokenizer)))
    if not beyond or not beyond <= set(tokenizer.convert_tokens_to_ids(list(CHAT_TOKENS))):
        return None
    torch.manual_seed(seed)
    model.resize_token_embeddings(vocab_rows(tokenizer, rows), mean_resizing=True)
    return (
        f"grew the embedding (wte, tied to lm_head) from {rows} to {model.config.vocab_size} rows for the chat "
        f"format's turn markers {', '.join(CHAT_TOKENS)}; the new rows start at the mean of the existing ones"
    )
