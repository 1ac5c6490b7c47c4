"""What a run leaves for people: the Hugging Face model folder in out_dir, with its card and loss plot, and
the push to the Hub."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from .checkpoint import MODEL_TMP


def write_model(accelerator, model, cfg, tokenizer, history, base_model, dataset_name, chat: bool = False) -> None:
    """The Hugging Face model folder in out_dir: each file written beside and renamed into place. `chat`: trained
    on conversations (the tokenizer carries the chat template, the generation config stops at the end of a turn,
    the card says how to talk to it)."""
    from transformers.utils import logging as hf_logging

    from ..conversion.nanogpt import TRAINING_CONFIG_FILE
    from ..model_card import LOSS_PLOT, WPE_PLOT
    from ..saving import umask_modes, write_model_folder

    hf_logging.disable_progress_bar()  # the training bar is the one to watch
    state_dict = accelerator.get_state_dict(model)  # gathered from every process under FSDP/DeepSpeed
    if not accelerator.is_main_process:
        return
    out_dir = Path(cfg.out_dir)
    tmp = out_dir / MODEL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model)
    # torch.compile's wrapper off
    unwrapped, state_dict = unsharded(getattr(unwrapped, "_orig_mod", unwrapped), state_dict)
    extra = {TRAINING_CONFIG_FILE: json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"}
    png = loss_plot(history)
    if png is not None:
        extra[LOSS_PLOT] = png
    # from the gathered weights where there are some (a ZeRO-3 model's own parameters are empty); their keys keep
    # the prefix of a wrapper Accelerate left on (torch.compile's "_orig_mod.")
    weights = state_dict if state_dict is not None else unwrapped.state_dict()
    wpe = wpe_plot(next(value for key, value in weights.items() if key.endswith("transformer.wpe.weight")))
    if wpe is not None:
        extra[WPE_PLOT] = wpe
    write_model_folder(
        unwrapped,
        tmp,
        tokenizer,
        model_card=training_card(
            cfg, unwrapped, history, base_model, dataset_name, png is not None, has_wpe_plot=wpe is not None, chat=chat
        ),
        extra_files=extra,
        state_dict=state_dict,
    )
    umask_modes(tmp)
    for item in tmp.iterdir():
        os.replace(item, out_dir / item.name)
    tmp.rmdir()


def unsharded(model, state_dict: dict) -> tuple:
    """(model, state_dict) for save_pretrained. An FSDP2 model becomes its own class again, holding the
    gathered weights (wte and lm_head tied again), and the state dict None: FSDP2 gives a sharded model a
    generated class, FSDP<Name>, which save_pretrained would write into config.json's auto_map as the remote
    code, with torch's FSDP files copied beside it."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model, state_dict
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls(model.config)
    plain.load_state_dict(state_dict, assign=True)  # the gathered tensors themselves: no copy
    plain.tie_weights()
    return plain, None


def loss_plot(history: list[dict]) -> bytes | None:
    """A PNG of train and val loss over iterations and, beside it, of bits per byte where the history has them
    (runs from before they were logged have none), or None without matplotlib or data."""
    if len(history) < 2:
        return None
    from ..plots import png, pyplot

    try:
        plt = pyplot()
    except ImportError:
        return None
    panels = {"": "loss (nats per token)"}  # history key suffix -> y label
    if any("val_bpb" in h for h in history):
        panels["_bpb"] = "bits per byte"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.5), dpi=100, sharex=True, squeeze=False)
    for ax, (suffix, ylabel) in zip(axes[0], panels.items()):
        for split in ("train", "val"):
            points = [(h["iter"], h[split + suffix]) for h in history if split + suffix in h]
            ax.plot([i for i, _ in points], [v for _, v in points], label=split)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return png(fig)


def wpe_plot(wpe: torch.Tensor) -> bytes | None:
    """A PNG of the cosine similarity between the positions of wpe (block_size, n_embd), or None without matplotlib."""
    from ..inspect_embeddings import similarity_plot
    from ..plots import pyplot

    try:
        pyplot()
    except ImportError:
        return None

    return similarity_plot(wpe.detach().float().cpu())


def training_card(
    cfg, model, history, base_model, dataset_name, has_plot: bool, has_wpe_plot: bool = False, chat: bool = False
) -> str:
    from ..model_card import (
        CHAT_HEADING,
        CHAT_TAGS,
        WPE_HEADING,
        base_model_id,
        chat_text,
        field_table,
        hub_datasets,
        model_shape,
        render_model_card,
        table,
        wpe_plot_text,
    )

    c = model.config
    rows = [
        {
            "iter": h["iter"],
            "train loss": f"{h['train']:.4f}",
            "val loss": f"{h['val']:.4f}",
            "val bpb": f"{h['val_bpb']:.4f}" if "val_bpb" in h else "",  # none in runs from before it was logged
        }
        for h in history
    ]
    bpbs = [h["val_bpb"] for h in history if "val_bpb" in h]
    muon = (
        [
            "muon_learning_rate",
            "muon_momentum",
            "muon_momentum_warmup",
            "muon_momentum_warmup_iters",
            "muon_weight_decay",
        ]
        if cfg.optimizer == "muon"
        else []
    )
    wsd = ["cooldown_frac"] if cfg.lr_schedule == "wsd" else []
    names = [
        "init_from",
        "dataset",
        "max_iters",
        "batch_size",
        "gradient_accumulation_steps",
        "block_size",
        "optimizer",
        *muon,
        "learning_rate",
        "min_lr",
        "lr_schedule",
        "warmup_iters",
        *wsd,
        "weight_decay",
        "dropout",
        "dtype",
    ]
    settings = {k: getattr(cfg, k) for k in names}
    model_ref = cfg.push_to_hub or cfg.out_dir
    sections = {CHAT_HEADING: chat_text(model_ref)} if chat else {}
    sections |= {
        "Training": field_table(settings, "setting"),
        "Losses": table(rows, ["iter", "train loss", "val loss", "val bpb"])
        + f"\n\nLoss in nats per token{' of the assistant' if chat else ''}; bpb: the val loss in bits per byte of "
        + "text, which compares across tokenizers."
        + ("\n\n![loss curve](loss.png)" if has_plot else ""),
    }
    if has_wpe_plot:  # beside the loss curve: what the position embedding learned
        sections[WPE_HEADING] = wpe_plot_text()
    shape = f"({model_shape(c.n_layer, c.n_head, c.n_embd, c.block_size)}, vocabulary {c.vocab_size})"
    return render_model_card(
        title=f"{Path(cfg.out_dir).name}: a nanoGPT {'chat ' if chat else ''}model trained with hf_nanogpt",
        summary=(
            (
                f"A chat model: a GPT {shape} {'fine-tuned' if base_model else 'trained'} with hf_nanogpt's "
                f"Accelerate trainer on the conversations of {dataset_name}"
                if chat
                else f"A GPT {shape} trained with hf_nanogpt's Accelerate trainer on {dataset_name}"
            )
            + (f", starting from {base_model}" if base_model else "")
            + (", its loss on the assistant's tokens only (the other turns are context, not targets)" if chat else "")
            + (f". Best validation loss {min(h['val'] for h in history):.4f}" if history else "")
            + (f", best validation bits per byte {min(bpbs):.4f}" if bpbs else "")
            + "."
        ),
        sections=sections,
        model_ref=model_ref,
        base_model=base_model_id(base_model),
        datasets=hub_datasets(cfg.dataset) if cfg.data_dir is None else None,
        tags=CHAT_TAGS if chat else None,
    )


def push(cfg, message: str) -> None:
    """out_dir's model folder (not checkpoints/, not the logs) to cfg.push_to_hub."""
    from ..hub import push_to_hub

    push_to_hub(cfg.out_dir, cfg.push_to_hub, private=cfg.hub_private, commit_message=message)
