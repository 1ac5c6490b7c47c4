"""Fine-tuning on conversations: the loss on the assistant's tokens only, in training and evaluation; the
embedding grown for the turn markers; the model folder a chat model needs (template, end of turn, card); and
resume, Muon and the Hub on chat data. Two processes: tests/test_distributed.py."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GenerationConfig, pipeline

from helpers import (
    FIXTURES,
    WRITE_TOKEN,
    conversations,
    evaluate_on_processes,
    read_log,
    step_losses,
    tiny,
    tiny_model,
    write_chat_data,
)
from hf_nanogpt.chat import CHAT_TEMPLATE, IM_END, add_chat_format, end_of_turn_id
from hf_nanogpt.data.tokens import IGNORE_INDEX, TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.hub import push_to_hub
from hf_nanogpt.tokenization import gpt2_tokenizer, token_byte_lengths
from hf_nanogpt.train import train
from hf_nanogpt.training.checkpoint import latest_checkpoint
from hf_nanogpt.training.evaluation import evaluation_windows
from hf_nanogpt.training.model import build_model, grow_for_chat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bpe_text(tmp_path_factory):
    """Shakespeare prepared with a 300-token BPE trained on it: a base model's data."""
    out = tmp_path_factory.mktemp("data") / "bpe_text"
    prepare(FIXTURES / "shakespeare_char" / "input_head.txt", out, tokenizer="bpe:300", log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def chat_data(bpe_text, tmp_path_factory):
    """Conversations in that BPE plus the two turn markers (302 ids), with their assistant masks."""
    return write_chat_data(
        tmp_path_factory.mktemp("data") / "chat", TokenData(bpe_text).tokenizer(), conversations(400)
    )


@pytest.fixture(scope="module")
def base_model(bpe_text, tmp_path_factory):
    """A model trained from scratch on the BPE's text: one row for each of its 300 ids, none for the markers."""
    out = tmp_path_factory.mktemp("base") / "out"
    train(tiny(bpe_text, out, max_iters=4, eval_interval=4))
    return out


def files(data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.fromfile(data_dir / f"{split}.bin", dtype=np.uint16).astype(np.int64),
        np.fromfile(data_dir / f"{split}.mask", dtype=np.uint8),
    )


def window_rows(ids, mask, starts, block_size: int):
    """x, y and which targets the assistant writes, read from the files by hand."""
    rows = np.stack([ids[s : s + block_size + 1] for s in starts])
    taught = np.stack([mask[s + 1 : s + block_size + 1] for s in starts]) == 1
    return torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:]), torch.from_numpy(taught)


def first_iteration_counts(cfg, data_dir) -> list[int]:
    """The assistant targets in each micro-batch of iteration 0: the trainer's windows, replayed."""
    ids, mask = files(data_dir, "train")
    generator = torch.Generator().manual_seed(cfg.seed)
    draws = [
        torch.randint(len(ids) - cfg.block_size, (cfg.batch_size,), generator=generator).numpy()
        for _ in range(cfg.gradient_accumulation_steps)
    ]
    return [int(window_rows(ids, mask, starts, cfg.block_size)[2].sum()) for starts in draws]


def with_seed_where(cfg, data_dir, wanted):
    """cfg with the first seed whose iteration 0 has micro-batch counts that `wanted` accepts."""
    return next(
        replace(cfg, seed=seed)
        for seed in range(1000)
        if wanted(first_iteration_counts(replace(cfg, seed=seed), data_dir))
    )


def test_windows_set_every_target_outside_the_assistants_turns_to_ignore(chat_data):
    data = TokenData(chat_data)
    assert data.chat and data.vocab_size == len(data.tokenizer()) == 302
    ids, mask = files(chat_data, "train")
    starts = torch.tensor([0, 5, 1000, len(ids) - 33])
    x, y = data.windows("train", starts, 32)
    x_hand, y_hand, taught = window_rows(ids, mask, starts.numpy(), 32)
    assert torch.equal(x, x_hand) and torch.equal(y, torch.where(taught, y_hand, IGNORE_INDEX))
    # the assistant's turns end with <|im_end|>, which it learns to write
    tok = data.tokenizer()
    assert (y == end_of_turn_id(tok)).any() and tok.decode(y[y != IGNORE_INDEX][:12]).count(" plus ") >= 1


def test_the_loss_is_the_mean_over_the_iterations_assistant_targets_and_an_empty_micro_batch_adds_none(
    chat_data, tmp_path
):
    """Iteration 0's logged loss is every assistant target's nats over their number, over its three
    micro-batches, one of which has none: computed here from the files, by hand, with the model it starts from."""
    cfg = tiny(chat_data, tmp_path / "out", batch_size=2, gradient_accumulation_steps=3, max_iters=10)
    cfg = with_seed_where(cfg, chat_data, lambda counts: counts[1] == 0 and counts[0] != counts[2])
    model = build_model(cfg, 302)[0].eval()  # the trainer's start: seeded with cfg.seed
    ids, mask = files(chat_data, "train")
    generator = torch.Generator().manual_seed(cfg.seed)
    nats, counts = 0.0, []
    for _ in range(cfg.gradient_accumulation_steps):
        starts = torch.randint(len(ids) - cfg.block_size, (cfg.batch_size,), generator=generator).numpy()
        x, y, taught = window_rows(ids, mask, starts, cfg.block_size)
        with torch.no_grad():
            every = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="none")
        nats += every[taught.flatten()].double().sum().item()
        counts.append(int(taught.sum()))
    assert counts[1] == 0 and sum(counts) > 0
    result = train(cfg)
    losses = step_losses(tmp_path / "out")
    assert losses[0] == pytest.approx(nats / sum(counts), rel=1e-5)
    assert all(math.isfinite(v) for v in losses.values())
    assert result["stopped"] is None and result["history"][-1]["val"] < result["history"][0]["val"]


def test_an_iteration_with_no_assistant_target_is_a_zero_gradient_and_logs_no_loss(chat_data, tmp_path):
    cfg = tiny(chat_data, tmp_path / "out", batch_size=1, max_iters=0, eval_iters=8, weight_decay=0.0)
    cfg = with_seed_where(cfg, chat_data, lambda counts: counts == [0])
    start = build_model(cfg, 302)[0]
    result = train(cfg)
    assert result["stopped"] is None and step_losses(tmp_path / "out") == {}  # a loss over nothing is none
    # AdamW's first step on a zero gradient (and no weight decay) leaves every weight as it was
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(torch.equal(after.state_dict()[k], v) for k, v in start.state_dict().items())


def test_micro_batches_weigh_what_they_count(chat_data, tmp_path):
    """2 micro-batches of 4 windows are 1 of 8, though their counts of assistant targets differ: a mean of the
    micro-batches' means would not be."""
    train(tiny(chat_data, tmp_path / "a", batch_size=8, gradient_accumulation_steps=1, max_iters=6))
    train(tiny(chat_data, tmp_path / "b", batch_size=4, gradient_accumulation_steps=2, max_iters=6))
    a, b = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert sorted(a) == sorted(b) and len(a) >= 5  # an iteration that counts nothing logs no loss, in both
    for it in a:
        assert b[it] == pytest.approx(a[it], rel=1e-5), it


def test_evaluation_counts_assistant_targets_only_on_any_number_of_processes(chat_data):
    """The loss per assistant token is their nats over their number across all batches (not the mean of the
    batches' means, their counts differ); bits per byte over the bytes they stand for (<|im_end|> has none)."""
    data = TokenData(chat_data)
    tok = data.tokenizer()
    model = tiny_model(seed=3, vocab_size=320)
    token_bytes = token_byte_lengths(tok, 320)
    windows = evaluation_windows(data, 32, batch_size=4, eval_iters=5)  # 2 and 3 processes score some twice
    (one,) = evaluate_on_processes(1, model, data, windows, 32, token_bytes)
    for split, batches in windows.items():
        ids, mask = files(chat_data, split)
        nats, count, bpb_nats, num_bytes, means = 0.0, 0, 0.0, 0, []
        for starts in batches:
            x, y, taught = window_rows(ids, mask, starts.numpy(), 32)
            with torch.no_grad():
                every = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="none")
            taught, target_bytes = taught.flatten(), token_bytes[y.flatten()]
            nats += every[taught].double().sum().item()
            count += int(taught.sum())
            bpb_nats += every[taught & (target_bytes > 0)].double().sum().item()
            num_bytes += int(target_bytes[taught].sum())
            means.append(every[taught].mean().item())
        assert one[split] == pytest.approx(nats / count, rel=1e-6)
        assert one[split] != pytest.approx(np.nanmean(means), rel=1e-4)  # the counts differ: not a mean of means
        assert one[f"{split}_bpb"] == pytest.approx(bpb_nats / (math.log(2) * num_bytes), rel=1e-6)
    for world in (2, 3):
        for figures in evaluate_on_processes(world, model, data, windows, 32, token_bytes):
            assert figures == pytest.approx(one, rel=1e-6), world


def test_gpt2s_padded_rows_take_the_markers_and_other_rows_grow():
    tok = add_chat_format(gpt2_tokenizer())
    padded = tiny_model(vocab_size=50304)
    assert grow_for_chat(padded, tok, seed=0) is None and padded.config.vocab_size == 50304
    unpadded = tiny_model(vocab_size=50257)  # GPT-2's own 50,257 rows: grown to nanoGPT's 50,304
    assert "from 50257 to 50304 rows" in grow_for_chat(unpadded, tok, seed=0)
    assert unpadded.lm_head.weight is unpadded.transformer.wte.weight and unpadded.lm_head.out_features == 50304


def test_a_base_model_without_room_for_other_ids_is_refused(chat_data, tmp_path):
    tiny_model(vocab_size=96, block_size=32).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="302 tokens, but the model has 96 embeddings; only the chat format's two"):
        train(tiny(chat_data, tmp_path / "out", init_from=str(tmp_path / "small")))
    assert not (tmp_path / "out").exists()


def test_a_trained_bpe_model_grows_its_embedding_for_the_markers(base_model, chat_data, tmp_path, capsys):
    """From a model with a row for each of the BPE's 300 ids: 302 ids need 320 rows (a multiple of 64). With no
    learning rate, the folder shows the growth alone: the old rows as they were, the new ones at their mean."""
    frozen = dict(max_iters=0, learning_rate=0.0, min_lr=0.0, weight_decay=0.0)
    train(tiny(chat_data, tmp_path / "out", init_from=str(base_model), **frozen))
    assert "grew the embedding (wte, tied to lm_head) from 300 to 320 rows" in capsys.readouterr().out
    before = load_file(base_model / "model.safetensors")["transformer.wte.weight"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    after = model.transformer.wte.weight.detach()
    assert (
        model.config.vocab_size == 320
        and after.shape == (320, 32)
        and model.lm_head.weight is model.transformer.wte.weight
    )
    assert torch.equal(after[:300], before)
    assert torch.allclose(after[300:], before.mean(0).expand(20, -1), atol=1e-3)


@pytest.fixture(scope="module")
def tuned(base_model, chat_data, tmp_path_factory):
    """20 iterations of fine-tuning the base model on the conversations, and the same run cut at its checkpoint
    at 10 and resumed (dropout on, so the restored random state matters)."""
    root = tmp_path_factory.mktemp("tuned")
    settings = dict(
        init_from=str(base_model),
        max_iters=20,
        lr_decay_iters=20,
        eval_interval=10,
        always_save_checkpoint=True,
        dropout=0.1,
    )
    full = train(tiny(chat_data, root / "full", **settings))
    train(tiny(chat_data, root / "cut", **{**settings, "max_iters": 10}))
    resumed = train(tiny(chat_data, root / "cut", **{**settings, "init_from": "resume"}))
    return root, full, resumed


def test_chat_fine_tuning_resumes_bit_exact_with_the_grown_model(tuned):
    root, full, resumed = tuned
    assert (
        json.loads((latest_checkpoint(root / "cut") / "model_config" / "config.json").read_text())["vocab_size"] == 320
    )
    a, b = step_losses(root / "full"), step_losses(root / "cut")
    assert sorted(a) == sorted(b) and 20 in a and all(a[it] == b[it] for it in a)  # bit-exact
    assert resumed["history"][-1] == full["history"][-1]
    assert full["history"][-1]["val"] < full["history"][0]["val"]


def test_the_model_folder_is_a_chat_model(tuned, base_model):
    root, _, _ = tuned
    out = root / "full"
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert len(json.loads((out / "tokenizer.json").read_text())["added_tokens"]) == 3  # <|endoftext|> and the markers
    assert "chat_template" not in tok_config or tok_config["chat_template"] == CHAT_TEMPLATE
    gen = GenerationConfig.from_pretrained(out)
    im_end = 300 + 1  # after the BPE's 300 ids: <|im_start|> 300, <|im_end|> 301
    assert gen.eos_token_id == [im_end, 0] and gen.pad_token_id == 0  # the BPE's <|endoftext|> is its id 0
    assert gen.suppress_tokens == list(range(302, 320))  # rows no id uses
    chat = pipeline("text-generation", model=str(out))
    assert chat.tokenizer.convert_tokens_to_ids(IM_END) == im_end
    reply = chat([{"role": "user", "content": "2 plus 3?"}], do_sample=False)  # up to block_size in all
    messages = reply[0]["generated_text"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and isinstance(messages[-1]["content"], str)
    card = ModelCard((out / "README.md").read_text())
    assert "conversational" in card.data.tags and card.data.pipeline_tag == "text-generation"
    assert "A chat model: a GPT (2 layers" in card.text and f"starting from {base_model}" in card.text
    assert "its loss on the assistant's tokens only" in card.text and "## Chat" in card.text
    assert f"hf-nanogpt chat {out}" in card.text and "Loss in nats per token of the assistant" in card.text


def test_a_pushed_chat_model_points_its_card_at_the_repo(tuned, hub):
    root, _, _ = tuned
    push_to_hub(root / "full", "alice/chat-tiny", token=WRITE_TOKEN)
    api = HfApi(token=WRITE_TOKEN)
    assert {"chat_template.jinja", "generation_config.json", "README.md"} <= set(
        api.list_repo_files("alice/chat-tiny")
    )
    card = ModelCard.load("alice/chat-tiny", token=WRITE_TOKEN)
    assert "hf-nanogpt chat alice/chat-tiny" in card.text and str(root / "full") not in card.text
    assert "conversational" in card.data.tags


def test_muon_fine_tunes_on_conversations(chat_data, tmp_path):
    result = train(tiny(chat_data, tmp_path / "out", optimizer="muon", max_iters=10, eval_interval=5))
    assert result["stopped"] is None and all(math.isfinite(v) for v in step_losses(tmp_path / "out").values())
    assert result["history"][-1]["val"] < result["history"][0]["val"]
    evals = [r for r in read_log(tmp_path / "out") if "val_bpb" in r]
    assert all(math.isfinite(r["val_bpb"]) for r in evals)
