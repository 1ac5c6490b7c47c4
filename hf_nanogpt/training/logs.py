"""The run's log: out_dir/log.jsonl (one JSON record a line, written by the main process) and Accelerate's
trackers (tensorboard, wandb, trackio)."""

import importlib.util
import json

from .config import TrainConfig

LOG_FILE = "log.jsonl"
TRACKERS_DIR = "logs"  # in out_dir: tensorboard's events (with wandb too: the wandb project's name instead)


def log_record(log_file, record: dict) -> None:
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()


def tracker_names(cfg: TrainConfig) -> list[str]:
    """log_with as a list of Accelerate tracker names; auto is tensorboard when it is installed."""
    if cfg.log_with == "none":
        names = []
    elif cfg.log_with == "auto":
        names = (
            ["tensorboard"]
            if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
            else []
        )
    else:
        names = [n.strip() for n in cfg.log_with.split(",") if n.strip()]
    if cfg.wandb_log and "wandb" not in names:
        names.append("wandb")
    return names
