"""--optimizer muon and --lr_schedule wsd: the split, the schedule, validation, training, resume, DDP, export."""

import os
import re
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import BIN, as_args, free_port, one_process_evaluation, step_losses, tiny, tiny_model, val_losses
from hf_nanogpt.conversion.nanogpt import export_nanogpt
from hf_nanogpt.train import train
from hf_nanogpt.training.checkpoint import latest_checkpoint
from hf_nanogpt.training.config import TrainConfig, check_config, parse_args
from hf_nanogpt.training.optim import (
    configure_optimizers,
    get_lr,
    get_wsd_lr,
    muon_momentum,
    muon_split,
    set_hyperparameters,
)

pytestmark = pytest.mark.slow

MUON = dict(
    optimizer="muon", muon_learning_rate=0.05, muon_momentum_warmup_iters=15, lr_schedule="wsd", cooldown_frac=0.4
)


# -- the split and the optimizers -------------------------------------------------------------------------


def test_muon_gets_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_model(n_layer=2, bias=True)
    names = {id(p): name for name, p in model.named_parameters()}
    hidden, rest = muon_split(model)
    assert [names[id(p)] for p in hidden] == [
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    rest_names = [names[id(p)] for p in rest]
    assert rest_names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]  # lm_head is wte: once
    assert all(n.endswith(".bias") or ".ln_" in n or n.startswith("transformer.ln_f") for n in rest_names[2:])
    assert len(hidden) + len(rest) == len(list(model.parameters())) and not {id(p) for p in hidden} & {
        id(p) for p in rest
    }

    adamw, muon = configure_optimizers(
        model, TrainConfig(optimizer="muon", weight_decay=0.1, muon_weight_decay=0.01), "cpu"
    )
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    decayed, plain = adamw.param_groups
    assert [names[id(p)] for p in decayed["params"]] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert (decayed["weight_decay"], plain["weight_decay"], muon.param_groups[0]["weight_decay"]) == (0.1, 0.0, 0.01)
    assert muon.param_groups[0]["nesterov"] and muon.param_groups[0]["momentum"] == 0.85  # the warm-up's start
    [only] = configure_optimizers(model, TrainConfig(), "cpu")  # the default: nanoGPT's AdamW on everything
    assert isinstance(only, torch.optim.AdamW) and sum(len(g["params"]) for g in only.param_groups) == len(names)


# -- the schedules --------------------------------------------------------------------------------------


def test_wsd_warms_up_as_nanogpt_holds_then_cools_down_linearly():
    cfg = TrainConfig(
        learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=100, lr_schedule="wsd", cooldown_frac=0.4
    )
    assert [get_wsd_lr(it, cfg) for it in range(10)] == [get_lr(it, cfg) for it in range(10)]  # nanoGPT's warmup
    assert {get_wsd_lr(it, cfg) for it in range(10, 61)} == {1e-3}  # constant up to the cool-down's start (60)
    assert get_wsd_lr(80, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down
    assert get_wsd_lr(99, cfg) == pytest.approx(1e-4 + 9e-4 / 40)
    assert get_wsd_lr(100, cfg) == get_wsd_lr(5000, cfg) == 1e-4
    no_cooldown = TrainConfig(**{**vars(cfg), "cooldown_frac": 0.0})
    assert get_wsd_lr(99, no_cooldown) == 1e-3 and get_wsd_lr(100, no_cooldown) == 1e-4
    all_cooldown = TrainConfig(**{**vars(cfg), "cooldown_frac": 1.0})  # starts where the warmup ends
    assert get_wsd_lr(10, all_cooldown) == 1e-3 and get_wsd_lr(55, all_cooldown) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert get_wsd_lr(70, TrainConfig(**{**vars(cfg), "decay_lr": False})) == 1e-3


def test_muon_follows_the_same_schedule_with_its_own_lr_and_warms_its_momentum():
    cfg = TrainConfig(
        optimizer="muon",
        learning_rate=2e-3,
        min_lr=2e-4,
        warmup_iters=10,
        lr_decay_iters=100,
        muon_learning_rate=0.04,
        muon_momentum=0.95,
        muon_momentum_warmup=0.85,
        muon_momentum_warmup_iters=300,
    )
    assert [muon_momentum(it, cfg) for it in (0, 150, 300, 1000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert muon_momentum(0, TrainConfig(muon_momentum_warmup_iters=0)) == 0.95
    adamw, muon = configure_optimizers(tiny_model(), cfg, "cpu")
    for it in (0, 5, 50, 100):
        lr = set_hyperparameters([adamw, muon], it, cfg)
        assert lr == get_lr(it, cfg) and {g["lr"] for g in adamw.param_groups} == {lr}  # AdamW's exactly as before
        assert muon.param_groups[0]["lr"] == pytest.approx(lr * 20)  # 0.04 / 2e-3
        assert muon.param_groups[0]["momentum"] == pytest.approx(muon_momentum(it, cfg))


# -- settings ---------------------------------------------------------------------------------------------


def test_settings_are_options_and_bad_values_are_named(capsys):
    cfg = parse_args(
        [
            "shakespeare_char_cpu",
            "--optimizer=muon",
            "--lr_schedule",
            "wsd",
            "--muon_learning_rate=0.08",
            "--cooldown_frac=0.3",
        ]
    )
    assert (cfg.optimizer, cfg.lr_schedule, cfg.muon_learning_rate, cfg.cooldown_frac) == ("muon", "wsd", 0.08, 0.3)
    assert (TrainConfig().optimizer, TrainConfig().lr_schedule) == ("adamw", "cosine")  # nanoGPT's, by default
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--optimizer",
        "--lr_schedule",
        "--muon_learning_rate",
        "--muon_momentum_warmup_iters",
        "--cooldown_frac",
    ):
        assert option in help_text
    bad = {
        "optimizer='sgd' (adamw or muon)": dict(optimizer="sgd"),
        "lr_schedule='linear' (cosine or wsd)": dict(lr_schedule="linear"),
        "cooldown_frac=1.5 (must be in [0, 1])": dict(cooldown_frac=1.5),
        "muon_momentum=1.0 (must be in [0, 1))": dict(optimizer="muon", muon_momentum=1.0),
        "muon_learning_rate=-0.1": dict(optimizer="muon", muon_learning_rate=-0.1),
        "learning_rate=0.0 (optimizer=muon scales": dict(optimizer="muon", learning_rate=0.0),
    }
    for message, values in bad.items():
        with pytest.raises(ValueError, match="invalid training settings: .*" + re.escape(message)):
            check_config(TrainConfig(**values))
    check_config(TrainConfig(learning_rate=0.0))  # AdamW may have a zero lr, as before


def test_muon_with_float16_is_refused_before_any_work(char_data, tmp_path):
    with pytest.raises(ValueError, match="optimizer=muon with float16.*--dtype=bfloat16"):
        train(tiny(char_data, tmp_path / "out", dtype="float16", **MUON))
    assert not (tmp_path / "out").exists()


# -- training, resume, export ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def muon_runs(char_data, tmp_path_factory):
    """A 20-iteration Muon + wsd run, and the same run cut at its checkpoint at 10 and resumed. Dropout is
    on, so the restored random state matters; the momentum warm-up (15) and the cool-down (12-20) lie
    across the resume point."""
    root = tmp_path_factory.mktemp("muon")
    settings = dict(
        max_iters=20, lr_decay_iters=20, eval_interval=10, always_save_checkpoint=True, dropout=0.1, **MUON
    )
    full = train(tiny(char_data, root / "full", **settings))
    train(tiny(char_data, root / "cut", **{**settings, "max_iters": 10}))  # its last checkpoint: iter 10
    resumed = train(tiny(char_data, root / "cut", init_from="resume", **settings))
    return root, full, resumed


def test_muon_trains_and_resumes_bit_exact(muon_runs):
    root, full, resumed = muon_runs
    history = full["history"]
    assert [h["iter"] for h in history] == [0, 10, 20] and history[-1]["val"] < history[0]["val"] - 0.5
    checkpoint = latest_checkpoint(root / "full")
    assert {"optimizer.bin", "optimizer_1.bin"} <= set(os.listdir(checkpoint))  # AdamW's and Muon's state
    a, b = step_losses(root / "full"), step_losses(root / "cut")
    assert sorted(a) == list(range(21)) and a[20] == b[20]  # bit-exact
    assert all(a[it] == b[it] for it in a)
    assert resumed["history"][-1]["val"] == full["history"][-1]["val"]
    card = (root / "full" / "README.md").read_text()
    assert (
        "| optimizer | muon |" in card and "| muon_learning_rate | 0.05 |" in card and "| lr_schedule | wsd |" in card
    )


def test_resuming_with_the_other_optimizer_is_refused(muon_runs, char_data):
    root, _, _ = muon_runs
    with pytest.raises(
        ValueError, match="trained with optimizer=muon, this run asks for optimizer=adamw; pass --optimizer=muon"
    ):
        train(tiny(char_data, root / "cut", init_from="resume", max_iters=25))


def test_export_to_nanogpt_writes_an_optimizer_entry_for_adamw_runs_only(muon_runs, char_data, tmp_path):
    root, _, _ = muon_runs
    lines = []
    export_nanogpt(root / "full", tmp_path / "muon", log=lines.append)
    ckpt = torch.load(tmp_path / "muon" / "ckpt.pt", weights_only=True)
    assert "optimizer" not in ckpt and {"model", "model_args", "iter_num", "config"} <= set(ckpt)
    assert any("trained with optimizer=muon" in line and "no optimizer entry" in line for line in lines)
    model = AutoModelForCausalLM.from_pretrained(root / "full")
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    train(tiny(char_data, tmp_path / "adamw", max_iters=2))
    lines.clear()
    export_nanogpt(tmp_path / "adamw", tmp_path / "adamw-ckpt", log=lines.append)
    assert "optimizer" in torch.load(tmp_path / "adamw-ckpt" / "ckpt.pt", weights_only=True)
    assert not any("no optimizer entry" in line for line in lines)


def test_two_processes_with_muon_follow_one_process_with_twice_the_batch(char_data, tmp_path):
    """DDP all-reduces the gradients before Muon orthogonalises them: 2 x batch 4 == 1 x batch 8."""
    common = dict(max_iters=6, lr_decay_iters=6, eval_interval=6, always_save_checkpoint=True, **MUON)
    one = tiny(char_data, tmp_path / "one", batch_size=8, gradient_accumulation_steps=1, **common)
    two = tiny(char_data, tmp_path / "two", batch_size=4, gradient_accumulation_steps=2, **common)
    train(one)
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "accelerate", "cpu_2proc.yaml")
    launch = [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        config,
        "--main_process_port",
        str(free_port()),
        "-m",
        "hf_nanogpt.train",
        *as_args(two),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(MULTI_CPU)" in result.stdout
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(7))
    for it in a:  # Newton-Schulz runs in bfloat16: a little looser than AdamW's 1e-4
        assert b[it] == pytest.approx(a[it], rel=1e-3), it
    assert {"optimizer.bin", "optimizer_1.bin"} <= set(os.listdir(latest_checkpoint(tmp_path / "two")))
    assert val_losses(tmp_path / "two")[-1] == pytest.approx(
        one_process_evaluation(two)["val"], rel=1e-6
    )  # any world size
