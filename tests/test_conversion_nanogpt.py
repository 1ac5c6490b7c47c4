"""nanoGPT checkpoints -> model folders -> nanoGPT checkpoints, nanoGPT-compatible sampling, bad input."""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

from helpers import FIXTURES, NANOGPT_FIXTURES, load_nanogpt_fixture, tiny_model, trained_bpe
from hf_nanogpt import cli
from hf_nanogpt.conversion.nanogpt import CheckpointError, convert_nanogpt, export_nanogpt, load_checkpoint
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import CHAR_UNKNOWN, read_meta_pkl

A, B = "A_char_nobias", "B_bpe_bias"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both fixtures converted once: A through the CLI, B through the Python API."""
    root = tmp_path_factory.mktemp("converted")
    assert cli.main(["convert", "nanogpt", str(NANOGPT_FIXTURES / A), str(root / A)]) == 0
    result = convert_nanogpt(NANOGPT_FIXTURES / B / "ckpt.pt", root / B)
    assert result.max_abs_diff <= 1e-5 and result.vocab_size == 50304
    return root


def copy_fixture(name: str, dest: Path, with_meta: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(NANOGPT_FIXTURES / name / "ckpt.pt", dest / "ckpt.pt")
    if with_meta and (NANOGPT_FIXTURES / name / "meta.pkl").exists():
        shutil.copy(NANOGPT_FIXTURES / name / "meta.pkl", dest / "meta.pkl")
    return dest


def only(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# -- what a converted folder holds -------------------------------------------------------------------


@pytest.mark.parametrize("name", [A, B])
def test_folder_contents(converted, name):
    folder = converted / name
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "modeling_nanogpt.py",
        "configuration_nanogpt.py",
        "nanogpt.json",
    } <= set(only(folder))
    assert only(converted) == [A, B]  # no temporary folders left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["model_type"] == "nanogpt"
    card = (folder / "README.md").read_text()
    info = json.loads((NANOGPT_FIXTURES / name / "info.json").read_text())
    for needle in [
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "nanogpt",
        "ckpt.pt",
        str(info["iter_num"]),
        f"{info['best_val_loss']:.4f}",
        info["config"]["dataset"],
        f"n_layer={info['model_args']['n_layer']}",
        "trust_remote_code=True",
    ]:
        assert needle in card, needle


@pytest.mark.parametrize("name", [A, B])
def test_converted_folder_reproduces_nanogpt(converted, name):
    fixture = load_nanogpt_fixture(name)
    model = AutoModelForCausalLM.from_pretrained(converted / name).eval()
    inputs, refs = fixture["inputs"], fixture["refs"]
    with torch.no_grad():
        logits = model(inputs["input_ids"]).logits
        loss = model(inputs["loss_input_ids"], shift_labels=inputs["loss_targets"]).loss
    if "logits" in refs:
        assert (logits - refs["logits"]).abs().max() <= 1e-5
    else:
        assert (logits[:, refs["positions"]] - refs["logits_at_positions"]).abs().max() <= 1e-5
    assert abs(loss.item() - refs["loss"].item()) <= 1e-5
    greedy = fixture["greedy"]
    tok = AutoTokenizer.from_pretrained(converted / name)
    prompt = tok(greedy["prompt_text"], return_tensors="pt")
    assert prompt.input_ids[0].tolist() == greedy["prompt_ids"]
    out = model.generate(**prompt, max_new_tokens=40, do_sample=False, suppress_tokens=None)
    assert out[0, len(greedy["prompt_ids"]) :].tolist() == greedy["new_ids"]
    assert tok.decode(out[0]) == greedy["text"]


@pytest.mark.parametrize("name", [A, B])
def test_pipeline_on_converted_folder(converted, name):
    pipe = pipeline("text-generation", model=str(converted / name))
    text = pipe("ROMEO:", max_new_tokens=20, do_sample=True)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_padded_vocab_is_suppressed_in_generation_config(converted):
    gen = GenerationConfig.from_pretrained(converted / B)
    assert gen.suppress_tokens == list(range(50257, 50304))
    assert gen.max_length == 64 and gen.max_new_tokens is None and gen.eos_token_id == gen.pad_token_id == 50256
    assert GenerationConfig.from_pretrained(converted / A).suppress_tokens is None


def test_crop_vocab(tmp_path, capsys):
    assert cli.main(["convert", "nanogpt", str(NANOGPT_FIXTURES / B), str(tmp_path / "out"), "--crop-vocab"]) == 0
    printed = capsys.readouterr().out
    assert "max |logits difference| = 0.000e+00" in printed and "vocab 50257" in printed
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.vocab_size == 50257 and model.lm_head.weight is model.transformer.wte.weight
    fixture = load_nanogpt_fixture(B)
    with torch.no_grad():
        logits = model(fixture["inputs"]["input_ids_short"]).logits
    assert (logits - fixture["refs"]["logits_short"][..., :50257]).abs().max() <= 1e-5
    assert GenerationConfig.from_pretrained(tmp_path / "out").suppress_tokens is None


# -- what real checkpoints contain --------------------------------------------------------------------


def test_compile_and_ddp_prefixes_mask_buffers_and_optimizer(tmp_path, converted):
    ckpt = torch.load(NANOGPT_FIXTURES / A / "ckpt.pt", weights_only=True)
    assert "optimizer" in ckpt  # dropped on conversion
    n_layer = ckpt["model_args"]["n_layer"]
    model = {("_orig_mod." if i % 2 else "module._orig_mod.") + k: v for i, (k, v) in enumerate(ckpt["model"].items())}
    for i in range(n_layer):  # older nanoGPT saved the causal mask as attn.bias
        model[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    ckpt["model"] = model
    (tmp_path / "src").mkdir()
    torch.save(ckpt, tmp_path / "src" / "ckpt.pt")
    convert_nanogpt(tmp_path / "src", tmp_path / "out", meta=str(NANOGPT_FIXTURES / A / "meta.pkl"))
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    reference = AutoModelForCausalLM.from_pretrained(converted / A).state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def test_untied_save_without_lm_head(tmp_path, converted):
    ckpt = torch.load(NANOGPT_FIXTURES / A / "ckpt.pt", weights_only=True)
    del ckpt["model"]["lm_head.weight"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "out", meta=str(NANOGPT_FIXTURES / A / "meta.pkl"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(model.lm_head.weight, ckpt["model"]["transformer.wte.weight"])


def test_meta_found_in_data_dataset_folder_like_sample_py(tmp_path, monkeypatch):
    src = copy_fixture(A, tmp_path / "out-shakespeare-char", with_meta=False)
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    shutil.copy(NANOGPT_FIXTURES / A / "meta.pkl", tmp_path / "data" / "shakespeare_char" / "meta.pkl")
    monkeypatch.chdir(tmp_path)
    result = convert_nanogpt(src, tmp_path / "hf")
    assert "char level" in result.tokenizer and "data/shakespeare_char/meta.pkl" in result.tokenizer
    assert len(AutoTokenizer.from_pretrained(tmp_path / "hf")) == 78


def test_tokenizer_flags(tmp_path):
    gpt2 = convert_nanogpt(NANOGPT_FIXTURES / B, tmp_path / "b", tokenizer="gpt2")
    assert "gpt2" in gpt2.tokenizer
    tok_dir = tmp_path / "tok"
    AutoTokenizer.from_pretrained(tmp_path / "b").save_pretrained(tok_dir)
    convert_nanogpt(NANOGPT_FIXTURES / B, tmp_path / "b2", tokenizer=str(tok_dir))
    assert AutoTokenizer.from_pretrained(tmp_path / "b2")("Hello world").input_ids == [15496, 995]
    with pytest.raises(ValueError, match="either --meta or --tokenizer"):
        convert_nanogpt(NANOGPT_FIXTURES / B, tmp_path / "b3", tokenizer="gpt2", meta="x.pkl")


# -- char-level tokenizer from meta.pkl ---------------------------------------------------------------


def test_char_tokenizer_equals_nanogpt_prepare(converted):
    tok = AutoTokenizer.from_pretrained(converted / A)  # no hf_nanogpt code needed to load it
    text = (FIXTURES / "shakespeare_char" / "input_head.txt").read_text(encoding="utf-8")
    ids = np.fromfile(FIXTURES / "shakespeare_char" / "train_head.bin", dtype=np.uint16)
    encoded = tok(text)["input_ids"]
    assert encoded == ids.tolist()
    assert tok.decode(encoded) == text
    with pytest.raises(Exception, match=CHAR_UNKNOWN):  # decided: unknown characters are refused, not dropped
        tok("ROMEO: ça va?")


# -- back out to nanoGPT ------------------------------------------------------------------------------


def nanogpt_optimizer_groups(model_args: dict):
    """nanoGPT's configure_optimizers, on a model of the same shapes (names from its named_parameters)."""
    from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM

    model = NanoGPTForCausalLM(NanoGPTConfig(**model_args))
    params = dict(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )


@pytest.mark.parametrize("name", [A, B])
def test_round_trip_is_exact_and_resumable(converted, tmp_path, name):
    assert cli.main(["export", "nanogpt", str(converted / name), str(tmp_path / "out")]) == 0
    source = torch.load(NANOGPT_FIXTURES / name / "ckpt.pt", weights_only=True)
    exported = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)  # as sample.py/train.py load it
    assert list(exported["model"]) == list(source["model"])
    for key, tensor in source["model"].items():
        assert torch.equal(exported["model"][key], tensor) and exported["model"][key].dtype == tensor.dtype, key
    assert exported["model"]["lm_head.weight"].data_ptr() == exported["model"]["transformer.wte.weight"].data_ptr()
    assert exported["model_args"] == source["model_args"]
    assert exported["iter_num"] == source["iter_num"]
    assert torch.equal(exported["best_val_loss"], source["best_val_loss"])
    assert exported["config"]["dataset"] == source["config"]["dataset"]
    optimizer = nanogpt_optimizer_groups(exported["model_args"])
    optimizer.load_state_dict(exported["optimizer"])  # what train.py does with init_from='resume'
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    if name == A:
        assert read_meta_pkl(tmp_path / "out" / "meta.pkl") == read_meta_pkl(NANOGPT_FIXTURES / A / "meta.pkl")
        with open(tmp_path / "out" / "meta.pkl", "rb") as f, open(NANOGPT_FIXTURES / A / "meta.pkl", "rb") as g:
            assert pickle.load(f) == pickle.load(g)
    else:
        assert only(tmp_path / "out") == ["ckpt.pt"]  # GPT-2 BPE: sample.py falls back to tiktoken


def test_export_with_a_trained_bpe_keeps_its_tokenizer_and_says_sample_py_cannot_decode(tmp_path):
    texts = [(FIXTURES / "shakespeare_char" / "input_head.txt").read_text()]
    tokenizer = trained_bpe(texts, 500)  # not GPT-2's vocabulary, though GPT-2's kind of tokenizer
    save_model_folder(tiny_model(vocab_size=512), tmp_path / "src", tokenizer)
    logs = []
    export_nanogpt(tmp_path / "src", tmp_path / "out", log=logs.append)
    assert only(tmp_path / "out") == ["ckpt.pt", "tokenizer"]  # no meta.pkl: not char level
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["model_args"]["vocab_size"] == 512
    text = "ROMEO: What, art thou mad?\n"
    saved = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    assert saved(text).input_ids == tokenizer(text).input_ids and saved.decode(saved(text).input_ids) == text
    warning = next(line for line in logs if "sample.py cannot decode this model's tokens" in line)
    assert "would decode these ids as GPT-2's" in warning and "AutoTokenizer.from_pretrained(" in warning
    assert f"hf-nanogpt generate {tmp_path / 'src'}" in warning


def test_export_refuses_other_models_and_existing_output(converted, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50, n_positions=16)).save_pretrained(
        tmp_path / "gpt2"
    )
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        export_nanogpt(tmp_path / "gpt2", tmp_path / "x")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("x")  # as convert: an empty OUT is used, a non-empty one kept
    with pytest.raises(FileExistsError):
        export_nanogpt(converted / A, tmp_path / "exists")
    assert os.listdir(tmp_path / "exists") == ["keep.txt"]


# -- nanoGPT-compatible sampling ----------------------------------------------------------------------


def sample_blocks(text: str) -> str:
    """sample.py's stdout without its log lines (overrides, parameter count, meta loading)."""
    skip = ("Overriding:", "number of parameters:", "Loading meta from", "No meta.pkl found")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(skip))


@pytest.mark.parametrize("name", [A, B])
@pytest.mark.parametrize("kv_cache", [False, True])
def test_sample_prints_what_nanogpt_sample_py_prints(converted, name, kv_cache, capsys):
    args = [
        "sample",
        str(converted / name),
        "--start=ROMEO:",
        "--num_samples=2",
        "--max_new_tokens=100",
        "--seed=1337",
    ]
    assert cli.main(args + (["--kv_cache"] if kv_cache else [])) == 0
    expected = sample_blocks((NANOGPT_FIXTURES / name / "sample.txt").read_text(encoding="utf-8"))
    assert capsys.readouterr().out == expected


def test_sample_start_from_file_and_defaults(converted, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_text("ROMEO:", encoding="utf-8")
    cli.main(
        [
            "sample",
            str(converted / A),
            f"--start=FILE:{tmp_path / 'prompt.txt'}",
            "--num_samples=2",
            "--max_new_tokens=100",
        ]
    )
    expected = sample_blocks((NANOGPT_FIXTURES / A / "sample.txt").read_text(encoding="utf-8"))
    assert capsys.readouterr().out == expected  # seed 1337 is the default
    parser = cli.build_parser()
    d = parser.parse_args(["sample", "m"])
    assert (d.start, d.num_samples, d.max_new_tokens, d.temperature, d.top_k, d.seed) == (
        "\n",
        10,
        500,
        0.8,
        200,
        1337,
    )


def test_sample_bad_temperature(converted):
    with pytest.raises(SystemExit):
        cli.main(["sample", str(converted / A), "--temperature=0", "--num_samples=1", "--max_new_tokens=3"])


# -- bad input: clear errors, nothing written ---------------------------------------------------------


def assert_nothing_written(parent: Path, expected: list[str]):
    assert only(parent) == sorted(expected)


def test_truncated_checkpoint(tmp_path, capsys):
    data = (NANOGPT_FIXTURES / A / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*not a readable PyTorch checkpoint"):
        convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "out")
    with pytest.raises(SystemExit):
        cli.main(["convert", "nanogpt", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")])
    assert "ckpt.pt" in capsys.readouterr().err
    assert_nothing_written(tmp_path, ["ckpt.pt"])


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="noise.pt"):
        convert_nanogpt(tmp_path / "noise.pt", tmp_path / "out")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt.*missing \['model', 'model_args'\]"):
        convert_nanogpt(tmp_path / "other.pt", tmp_path / "out")
    with pytest.raises(CheckpointError, match="no nanoGPT checkpoint"):
        convert_nanogpt(tmp_path / "empty_dir_that_does_not_exist", tmp_path / "out")
    assert_nothing_written(tmp_path, ["noise.pt", "other.pt"])


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = torch.load(NANOGPT_FIXTURES / A / "ckpt.pt", weights_only=True)
    ckpt["config"] = Exploit()
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "out")
    assert not (tmp_path / "pwned").exists()


def test_meta_pkl_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 1, "stoi": {"a": 0}, "itos": {0: "a"}, "x": Exploit()}, f)
    with pytest.raises(
        ValueError, match=r"meta\.pkl.*refusing to load posix\.system|meta\.pkl.*refusing to load os\.system"
    ):
        convert_nanogpt(NANOGPT_FIXTURES / A, tmp_path / "out", meta=str(tmp_path / "meta.pkl"))
    assert not (tmp_path / "pwned").exists()
    assert_nothing_written(tmp_path, ["meta.pkl"])


def test_missing_keys(tmp_path):
    ckpt = torch.load(NANOGPT_FIXTURES / A / "ckpt.pt", weights_only=True)
    del ckpt["model"]["transformer.h.1.mlp.c_fc.weight"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*missing keys \['transformer\.h\.1\.mlp\.c_fc\.weight'\]"):
        convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "out", meta=str(NANOGPT_FIXTURES / A / "meta.pkl"))
    assert_nothing_written(tmp_path, ["ckpt.pt"])


def test_shapes_that_disagree_with_model_args(tmp_path):
    ckpt = torch.load(NANOGPT_FIXTURES / A / "ckpt.pt", weights_only=True)
    ckpt["model_args"]["block_size"] = 128
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight: expected \(128, 64\), found \(64, 64\)"):
        convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "out", meta=str(NANOGPT_FIXTURES / A / "meta.pkl"))
    ckpt["model_args"].update(block_size=64, n_head=5)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="n_embd"):
        convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "out", meta=str(NANOGPT_FIXTURES / A / "meta.pkl"))
    assert_nothing_written(tmp_path, ["ckpt.pt"])


def test_meta_vocab_size_disagrees(tmp_path):
    meta = read_meta_pkl(NANOGPT_FIXTURES / A / "meta.pkl")
    stoi = {ch: i for ch, i in meta["stoi"].items() if i < 70}
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 70, "stoi": stoi, "itos": {i: ch for ch, i in stoi.items()}}, f)
    with pytest.raises(CheckpointError, match=r"vocab_size 78 .* 70 characters"):
        convert_nanogpt(NANOGPT_FIXTURES / A, tmp_path / "out", meta=str(tmp_path / "meta.pkl"))
    assert_nothing_written(tmp_path, ["meta.pkl"])


def test_existing_output_needs_overwrite(tmp_path, converted):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_nanogpt(NANOGPT_FIXTURES / A, out)
    assert only(out) == ["keep.txt"]
    convert_nanogpt(NANOGPT_FIXTURES / A, out, overwrite=True)
    assert "model.safetensors" in only(out) and "keep.txt" not in only(out)
    assert_nothing_written(tmp_path, ["out"])


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    import hf_nanogpt.conversion.nanogpt as conv

    monkeypatch.setattr(conv, "reload_logits", lambda folder, ids: torch.full((2, ids.shape[1], 78), 5.0))
    with pytest.raises(CheckpointError, match="logits differ"):
        convert_nanogpt(NANOGPT_FIXTURES / A, tmp_path / "out")
    assert_nothing_written(tmp_path, [])


def test_load_checkpoint_uses_weights_only(tmp_path):
    ckpt = load_checkpoint(NANOGPT_FIXTURES / A / "ckpt.pt")
    assert set(ckpt) >= {"model", "model_args", "optimizer", "iter_num", "best_val_loss", "config"}


def test_torch_floor_has_a_safe_weights_only_unpickler():
    """torch.load(weights_only=True), which reads every checkpoint here, could corrupt memory on crafted
    files up to torch 2.9.1 (fixed in 2.10.0): pyproject must not admit those releases."""
    import re

    from packaging.version import Version

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'^\s*"torch>=([\d.]+)', pyproject, re.M).group(1)
    assert Version(floor) >= Version("2.10"), floor
