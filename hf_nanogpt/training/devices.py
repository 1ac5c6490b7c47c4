"""Devices, processes and precision: the Accelerator a run trains under.

Which layer does what: `accelerate launch` (or torchrun) starts the processes and sets the variables its
config file names; Accelerate forms the process group (NCCL on GPUs, gloo on CPUs), places each process,
wraps the model (DDP, or FSDP2 from the FSDP_* variables) and saves and loads its state; torch's
`fully_shard` does the sharding. Accelerate runs FSDP on GPUs only: on CPU processes it forms the process
group and then, without a word, trains them as plain data parallel. `shard_on_cpu` turns its FSDP2 path
on for them (see there).
"""

import os

import torch

from .config import TrainConfig

PRECISIONS = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # dtype -> Accelerate's mixed_precision


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (2x and more on GPT-2 shapes, BENCHMARKS.md)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def auto_dtype(cuda: bool) -> str:
    """nanoGPT's choice on CUDA (bf16 where supported, else fp16); on the CPU bf16 autocast where the
    processor has native bf16, else float32."""
    if cuda:
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def make_accelerator(cfg: TrainConfig, trackers: list[str]):
    """The Accelerator for cfg's device and dtype, in whatever world `accelerate launch` started; returns
    (accelerator, dtype name). Raises before any work on settings that cannot run together."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but no CUDA device is available.")
    dtype = cfg.dtype if cfg.dtype != "auto" else auto_dtype(cuda)
    precision = PRECISIONS.get(dtype)
    if precision is None:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}.")
    if cfg.optimizer == "muon" and precision == "fp16":
        raise ValueError(
            "optimizer=muon with float16: Accelerate's fp16 gradient scaler updates its scale at each "
            "optimizer's step, and Muon runs beside AdamW; use --dtype=bfloat16 or float32, or --optimizer=adamw."
        )
    # one process may run train() more than once (notebooks, tests): Accelerate keeps a process-wide state
    # that refuses a second mixed-precision setting, so start from a fresh one (the process group stays)
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision=precision,
        log_with=trackers or None,
        project_dir=cfg.out_dir,
        dynamo_backend="inductor" if cfg.compile else None,
    )
    check_world(accelerator)
    if not cuda and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        shard_on_cpu(accelerator, precision)
    kind = accelerator.distributed_type.value
    if cfg.optimizer == "muon" and kind in ("FSDP", "DEEPSPEED"):
        raise ValueError(
            f"optimizer=muon under {kind}: Muon orthogonalises whole matrices, which these shard; use DDP "
            f"(or one process), or --optimizer=adamw."
        )
    return accelerator, dtype


def check_world(accelerator) -> None:
    """`accelerate launch --cpu` (or `use_cpu: true`) asked for several processes or machines starts, without
    an MPI hostfile, one process per machine, each alone in its world and each the main one: N separate runs
    writing over each other. The launcher leaves the rendezvous address set for a world that never forms."""
    asked = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ
    if asked and accelerator.num_processes == 1 and "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "accelerate launch was asked for several processes or machines on the CPU (--cpu or use_cpu: true), but "
            "accelerate starts CPU worlds only with an MPI hostfile, so this process is alone in its world; launch "
            "with distributed_type MULTI_GPU (or FSDP) and use_cpu false, as configs/accelerate/cpu_2proc.yaml and "
            "multinode_cpu_2x1.yaml do: torchrun starts the processes, and they train on the CPU with gloo."
        )


def shard_on_cpu(accelerator, precision: str) -> None:
    """FSDP2 on CPU processes (gloo). Accelerate reads the FSDP config on any machine but switches to FSDP
    only for GPU-like devices; on CPUs it leaves the state MULTI_CPU and would wrap the model in DDP. Here
    its FSDP plugin is built from the launcher's FSDP_* variables, as Accelerate builds it on GPUs, and the
    state is marked FSDP, so Accelerate's own FSDP2 code takes over: prepare() calls torch's fully_shard on
    each Block and then the root, no_sync stops the gradient reduce-scatter, clip_grad_norm_ sums DTensor
    norms, save_state writes sharded checkpoints with torch.distributed.checkpoint, get_state_dict gathers
    the full weights."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP on CPU processes needs torch's fully_shard (FSDP2), but the config asks for fsdp_version: "
            f"{plugin.fsdp_version}; set fsdp_version: 2 (configs/accelerate/fsdp_cpu_2proc.yaml)."
        )
    if precision != "no":
        plugin.set_mixed_precision(precision)
    state = accelerator.state
    state.fsdp_plugin = plugin
    # both shared states: every AcceleratorState() made later copies PartialState's over its own
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if not accelerator.is_fsdp2:
        raise RuntimeError(
            "could not switch Accelerate to FSDP2 on CPU processes (this accelerate version keeps its "
            "state elsewhere); use DDP (configs/accelerate/cpu_2proc.yaml) or accelerate 1.15."
        )


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when it is true on any (a SIGTERM may reach only some)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(float(flag), device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0
