"""nanoGPT's train.py on Hugging Face Accelerate: one CPU to many GPUs and nodes, Hugging Face models out.

    hf-nanogpt train shakespeare_char_cpu --max_iters=500          # one process
    accelerate launch -m hf_nanogpt.train gpt2_124m                  # several (DDP, FSDP, DeepSpeed, nodes)

CONFIG is a preset name (hf_nanogpt/presets/*.yaml) or a YAML/JSON file; `--name value` (or
`--name=value`) overrides it. Option names and defaults are nanoGPT's.

The loop is nanoGPT's, a straight line: random block windows, gradient accumulation with the loss
scaled, AdamW (weight decay on 2-D tensors only), cosine learning rate with warmup, gradient clipping,
train/val loss every eval_interval, a checkpoint when val improves (or always). `--optimizer=muon` and
`--lr_schedule=wsd` swap in the optimizer and schedule of modded-nanogpt's speedrun, same model. Accelerate supplies
the devices, processes, mixed precision, checkpoint state and trackers.

Differences from nanoGPT, each on purpose:
- `gradient_accumulation_steps` is, as in nanoGPT, the total over all processes (divided by their
  number); the windows of each micro-step are drawn once for all processes and shared out, so N
  processes with batch b see exactly the windows one process with batch N*b would.
- Training windows come from a seeded generator saved in the checkpoint, so a resumed run continues bit
  for bit (tested on one CPU process and under FSDP on two). Every evaluation scores the same windows
  (`evaluation_windows`: drawn once from a fixed seed, shared out among the processes), so val losses
  compare across runs, evaluations and numbers of processes; nanoGPT draws new ones each time, from each
  process's own generator.
- Chat data (`prepare CONV OUT --tokenizer MODEL`) teaches the assistant's tokens only: the other targets are
  -100, which the loss leaves out. An iteration's loss is the mean over all its counted targets, every
  micro-batch's and every process's (transformers' num_items_in_batch, as its Trainer does), not a mean of
  micro-batch means: a micro-batch weighs what it counts, one that counts none adds 0 and a zero gradient.
  The embedding grows for the chat markers where a base model has no rows for them (model.grow_for_chat).
- Every evaluation gives the loss in bits per byte too (`val_bpb`: the targets' nats over the bytes of text
  they stand for, as nanochat's evaluate_bpb), which compares runs whose tokenizers differ.
- out_dir holds a Hugging Face model folder (the best model by val loss, or the latest with
  always_save_checkpoint) and checkpoints/, the resumable state, written to a temporary folder and
  renamed, so a kill mid-save leaves the previous checkpoint whole. Under FSDP each process writes its shard.

The parts live in hf_nanogpt/training/ (settings, model, optimizers, devices and FSDP, evaluation,
checkpoints, the model folder, MFU, logs); this file is the loop.
"""

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .tokenization import token_byte_lengths
from .training.checkpoint import (
    CHECKPOINTS,
    Preemption,
    check_same_optimizer,
    check_sharding,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from .training.config import TrainConfig, check_config, load_config_file, micro_steps_per_process, parse_args
from .training.devices import any_process, make_accelerator
from .training.evaluation import check_counted_targets, estimate_loss, evaluation_windows
from .training.logs import LOG_FILE, TRACKERS_DIR, log_record, tracker_names
from .training.measure import default_peak_flops, flops_per_token
from .training.model import build_model, crop_block_size, grow_for_chat
from .training.optim import configure_optimizers, set_hyperparameters
from .training.publish import push, write_model

__all__ = ["TrainConfig", "load_config_file", "main", "parse_args", "train"]


def train(cfg: TrainConfig) -> dict:
    """Run training as `cfg` says; returns {"iter_num", "best_val_loss", "history", "out_dir", "stopped"}."""
    from accelerate.utils import set_seed

    from .data.tokens import TokenData
    from .saving import check_apart

    # -- everything that can be wrong with the input, before any work
    check_config(cfg)
    data_dir = Path(cfg.data_dir or Path("data") / cfg.dataset)
    check_apart(cfg.out_dir, data_dir, "out_dir", "data_dir")
    data = TokenData(data_dir)
    data.check_block_size(cfg.block_size)
    eval_windows = evaluation_windows(data, cfg.block_size, cfg.batch_size, cfg.eval_iters)  # the same every time
    check_counted_targets(data, eval_windows, cfg.block_size)
    model, base_model, resume_dir = build_model(cfg, data.vocab_size)
    if resume_dir is not None:
        check_same_optimizer(resume_dir, cfg)
    crop_block_size(model, cfg.block_size)
    tokenizer = data.tokenizer()
    grown = grow_for_chat(model, tokenizer, cfg.seed) if data.chat else None
    if data.vocab_size is not None and data.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{data_dir}: vocabulary of {data.vocab_size} tokens, but the model has {model.config.vocab_size} "
            f"embeddings"
            + (
                "; only the chat format's two turn markers may lie past a model's rows (its embedding grows for "
                "them): prepare the conversations with the model's own tokenizer (--tokenizer MODEL)."
                if data.chat
                else "."
            )
        )
    trackers = tracker_names(cfg)
    accelerator, dtype = make_accelerator(cfg, trackers)
    if resume_dir is not None:
        check_sharding(resume_dir, accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    grad_accum = micro_steps_per_process(cfg, world)
    main = accelerator.is_main_process
    out_dir = Path(cfg.out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
    set_seed(cfg.seed + rank)  # dropout differs per process; the data windows do not (below)

    # -- the model on its devices (DDP or FSDP shards), the optimizers, and where the run left off
    model.set_attn_implementation(cfg.attn_implementation)
    optimizers = configure_optimizers(model, cfg, accelerator.device.type)
    model, *optimizers = accelerator.prepare(model, *optimizers)  # each in accelerate's checkpoint state
    raw_model = accelerator.unwrap_model(model)
    train_gen = torch.Generator().manual_seed(cfg.seed)  # the data position: the training windows' generator
    token_bytes = token_byte_lengths(tokenizer, raw_model.config.vocab_size).to(accelerator.device)  # bits per byte
    iter_num, best_val_loss, history = 0, 1e9, []
    if resume_dir is not None:
        saved = load_checkpoint(accelerator, resume_dir, train_gen)
        iter_num, best_val_loss, history, base_model = (
            saved["iter_num"],
            saved["best_val_loss"],
            saved["history"],
            saved.get("base_model"),
        )
    dataset_name = cfg.dataset if cfg.data_dir is None else str(data_dir)

    model_written = False  # in this run: every process knows it alike (a file check could differ)

    def checkpoint() -> None:
        nonlocal model_written
        state = {"iter_num": iter_num, "best_val_loss": best_val_loss, "history": history, "base_model": base_model}
        save_checkpoint(accelerator, model, cfg, state, {"train_gen": train_gen.get_state()})
        write_model(accelerator, model, cfg, tokenizer, history, base_model, dataset_name, data.chat)
        model_written = True

    tokens_per_iter = grad_accum * world * cfg.batch_size * cfg.block_size
    flops_per_iter = flops_per_token(raw_model, cfg.block_size) * tokens_per_iter / world  # per device
    peak, peak_source = (
        (cfg.peak_flops, "--peak_flops") if cfg.peak_flops > 0 else default_peak_flops(accelerator.device, dtype)
    )
    if main:
        if grown:
            print(grown)
        print(
            f"tokens per iteration will be: {tokens_per_iter:,} ({world} process(es) x {grad_accum} micro-steps x "
            f"{cfg.batch_size} x {cfg.block_size}); {raw_model.num_parameters() / 1e6:.2f}M parameters; "
            f"{accelerator.device} ({accelerator.distributed_type.value}), {dtype}; "
            f"MFU against {peak / 1e12:.1f} TFLOP/s ({peak_source})"
        )
    if trackers:
        # tensorboard writes to out_dir/<project>: TRACKERS_DIR there, the wandb project name for wandb
        accelerator.init_trackers(
            cfg.wandb_project if "wandb" in trackers else TRACKERS_DIR,
            config=dataclasses.asdict(cfg),
            init_kwargs={"wandb": {"name": cfg.wandb_run_name}} if "wandb" in trackers else {},
        )
    log_file = open(out_dir / LOG_FILE, "a" if resume_dir else "w") if main else None

    # -- the loop
    preemption = Preemption()
    stopped = None
    model.train()
    bar = tqdm(
        total=cfg.max_iters + 1, initial=iter_num, desc="training", unit="iter", disable=not main, mininterval=1.0
    )
    t0 = time.time()
    try:
        while True:
            lr = set_hyperparameters(optimizers, iter_num, cfg)

            if iter_num % cfg.eval_interval == 0:
                losses = estimate_loss(model, accelerator, data, eval_windows, cfg.block_size, token_bytes)
                if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
                    stopped = f"loss became {losses} at iter {iter_num}"
                    break
                history = [h for h in history if h["iter"] != iter_num] + [{"iter": iter_num, **losses}]
                if main:
                    bar.write(
                        f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                        f"val bpb {losses['val_bpb']:.4f}"
                    )
                    log_record(
                        log_file,
                        {
                            "iter": iter_num,
                            "train_loss": losses["train"],
                            "val_loss": losses["val"],
                            "train_bpb": losses["train_bpb"],
                            "val_bpb": losses["val_bpb"],
                            "lr": lr,
                        },
                    )
                if trackers:
                    accelerator.log(
                        {
                            "train/loss": losses["train"],
                            "val/loss": losses["val"],
                            "train/bpb": losses["train_bpb"],
                            "val/bpb": losses["val_bpb"],
                            "lr": lr,
                        },
                        step=iter_num,
                    )
                if losses["val"] < best_val_loss or cfg.always_save_checkpoint:
                    best_val_loss = min(best_val_loss, losses["val"])
                    if iter_num > 0:
                        checkpoint()
                        if cfg.push_checkpoints and cfg.push_to_hub and main:
                            push(cfg, f"checkpoint at iter {iter_num}")
            if iter_num == 0 and cfg.eval_only:
                break
            if iter_num % cfg.eval_interval == 0:
                t0 = time.time()  # the step time excludes evaluation and checkpointing

            # forward, backward, update; gradients are synchronised on the last micro-step only. The loss is the
            # mean over all the iteration's counted targets (every target but chat data's -100s): every process
            # draws every process's window starts (one generator) and counts their targets, and each micro-batch's
            # loss is its nats over the count per process (DDP averages the processes' gradients), so the gradients
            # accumulate to the mean's. At least 1: an iteration that counts none (small chat batches) has no
            # gradient, and the optimizers step as on any zero gradient (momentum alone).
            starts = [
                data.random_starts("train", cfg.block_size, world * cfg.batch_size, train_gen)
                for _ in range(grad_accum)
            ]
            counted = sum(data.counted_targets("train", s, cfg.block_size) for s in starts)
            per_process = torch.tensor(max(counted, 1) / world, device=accelerator.device)
            mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)  # this process's share of the windows
            loss_sum = torch.zeros((), device=accelerator.device)
            for micro_step, step_starts in enumerate(starts):
                x, y = data.windows("train", step_starts[mine], cfg.block_size)  # only this process's windows
                x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
                last = micro_step == grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = model(x, shift_labels=y, num_items_in_batch=per_process).loss  # prepare(): under autocast
                    accelerator.backward(loss)
                loss_sum += loss.detach()
            if cfg.grad_clip != 0.0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            t1 = time.time()
            dt, t0 = t1 - t0, t1
            if iter_num % cfg.log_interval == 0 and counted:  # an iteration that counts no target has no loss to log
                lossf = accelerator.reduce(loss_sum, reduction="mean").item()  # the iteration's mean loss
                if not math.isfinite(lossf):
                    stopped = f"loss became {lossf} at iter {iter_num}"
                    break
                tok_s = tokens_per_iter / dt
                mfu = flops_per_iter / dt / peak
                if main:
                    bar.set_postfix(
                        loss=f"{lossf:.4f}",
                        lr=f"{lr:.2e}",
                        tok_s=f"{tok_s:,.0f}",
                        mfu=f"{100 * mfu:.1f}%",
                        refresh=False,
                    )
                    log_record(
                        log_file,
                        {"iter": iter_num, "loss": lossf, "lr": lr, "dt": dt, "tokens_per_s": tok_s, "mfu": mfu},
                    )
                if trackers:
                    accelerator.log(
                        {"train/iter_loss": lossf, "lr": lr, "tokens_per_s": tok_s, "mfu": mfu}, step=iter_num
                    )
            iter_num += 1
            bar.update(1)

            if iter_num > cfg.max_iters:
                break
            if any_process(accelerator, preemption.requested):
                checkpoint()
                stopped = preemption.signal or "SIGTERM"  # the signal may have reached another process only
                break
    finally:
        preemption.restore()
        bar.close()
        if log_file is not None:
            log_file.close()

    # -- the end: a model folder, a push, or the reason it stopped
    if stopped in ("SIGTERM", "SIGINT"):
        if main:
            print(
                f"{stopped}: saved a checkpoint at iter {iter_num} in {out_dir / CHECKPOINTS}; "
                f"resume with --init_from=resume"
            )
    elif stopped is not None:
        accelerator.end_training()
        raise FloatingPointError(f"{stopped}: stopping; the last good checkpoint is kept in {out_dir / CHECKPOINTS}.")
    elif not model_written and resume_dir is None:
        # short runs that never reached a checkpoint still leave a usable model
        write_model(accelerator, model, cfg, tokenizer, history, base_model, dataset_name, data.chat)
    if cfg.push_to_hub and main and stopped is None:
        push(cfg, "hf_nanogpt training run")
    accelerator.wait_for_everyone()
    if world > 1:
        # torch's gloo race at teardown: the barrier's work object is freed on a gloo thread, which needs the GIL
        # to drop the Python tensors of earlier reduces it holds; if this thread meanwhile frees the DDP model and
        # its process group (joining those threads with the GIL held), both wait forever (seen in CI: 2 of 3 runs
        # hung after their last checkpoint). A moment without the GIL lets that thread finish first.
        time.sleep(0.2)
    accelerator.end_training()
    return {
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "history": history,
        "out_dir": str(out_dir),
        "stopped": stopped,
    }


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or stopped by SIGTERM with a checkpoint), 1 a NaN loss, 2 bad input (`error: ...`,
    as every hf-nanogpt command), 130 Ctrl-C (as shells use)."""
    cfg = parse_args(argv)
    try:
        result = train(cfg)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a second Ctrl-C in the loop, or one before it started
        print(
            f"stopped by Ctrl-C at once; any complete checkpoint in {Path(cfg.out_dir) / CHECKPOINTS} is kept",
            file=sys.stderr,
        )
        return 130
    return 130 if result["stopped"] == "SIGINT" else 0


if __name__ == "__main__":
    sys.exit(main())
