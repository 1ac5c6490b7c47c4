"""TRL's SFTTrainer with `assistant_only_loss=True` on our model and chat format (hf_nanogpt/chat.py): the labels
it builds are the assistant mask of our template, it trains, and what it trains saves and loads back."""

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (it is in the [dev] extras: pip install -e '.[dev]')")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl.chat_template_utils import is_chat_template_stop_token_trained  # noqa: E402

from helpers import tiny_model, trained_bpe  # noqa: E402
from hf_nanogpt.chat import add_chat_format, end_of_turn_id, has_chat_format, vocab_rows  # noqa: E402

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATIONS = [
    [SYSTEM, {"role": "user", "content": "What does json.dumps do?"},
     {"role": "assistant", "content": "Serialize obj to a JSON formatted str."}],
    [SYSTEM, {"role": "user", "content": "What does math.sqrt do?"},
     {"role": "assistant", "content": "Return the square root of x."},
     {"role": "user", "content": "And math.exp?"},
     {"role": "assistant", "content": "Return e raised to the power of x."}],
    [{"role": "user", "content": "What is heapq.heappush for?"},
     {"role": "assistant", "content": "Push item onto heap, maintaining the heap invariant."}],
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [m["content"] for c in CONVERSATIONS for m in c] * 20
    return add_chat_format(trained_bpe(texts, 300))


def sft_trainer(model, tokenizer, conversations, out_dir, max_steps):
    config = trl.SFTConfig(
        output_dir=str(out_dir),
        assistant_only_loss=True,
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # TRL's default is bf16 autocast, which Accelerate leaves wrapped around the model's forward
        seed=0,
        max_length=model.config.block_size,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"messages": c} for c in conversations])
    return trl.SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)


def assistant_loss(model, tokenizer, messages) -> float:
    """Mean nats over the assistant's tokens, from our template's mask, not TRL's."""
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids = torch.tensor([out["input_ids"]])
    labels = torch.where(torch.tensor([out["assistant_masks"]]).bool(), ids, -100)
    with torch.no_grad():
        return model.eval()(ids, labels=labels).loss.item()


def test_our_template_keeps_its_generation_markers_and_teaches_the_end_of_turn(tokenizer):
    assert is_chat_template_stop_token_trained(tokenizer)  # else TRL warns the model may never learn to stop


def test_labels_are_minus_100_exactly_outside_the_assistant_tokens(tokenizer, tmp_path):
    model = tiny_model(vocab_size=vocab_rows(tokenizer, 0), block_size=128)
    trainer = sft_trainer(model, tokenizer, CONVERSATIONS, tmp_path, max_steps=1)
    assert tokenizer.chat_template == trainer.processing_class.chat_template  # ours, not a training template of TRL's
    rows = [trainer.train_dataset[i] for i in range(len(CONVERSATIONS))]
    batch = trainer.data_collator(rows)  # what each training step gets: (B, T), right-padded
    for i, messages in enumerate(CONVERSATIONS):
        ours = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        n = len(ours["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == ours["input_ids"]
        expected = [t if m else -100 for t, m in zip(ours["input_ids"], ours["assistant_masks"])]
        assert batch["labels"][i, :n].tolist() == expected
        assert (batch["labels"][i, n:] == -100).all() and batch["attention_mask"][i].sum() == n  # padding
        taught = [t for t in expected if t != -100]
        replies = sum(m["role"] == "assistant" for m in messages)
        assert taught.count(end_of_turn_id(tokenizer)) == replies  # each reply is taught to end its turn


def test_sft_lowers_the_assistant_loss_and_the_model_saves_and_reloads(tokenizer, tmp_path):
    model = tiny_model(vocab_size=vocab_rows(tokenizer, 0), block_size=128)
    conversation = CONVERSATIONS[1]
    before = assistant_loss(model, tokenizer, conversation)
    trainer = sft_trainer(model.train(), tokenizer, [conversation] * 8, tmp_path / "run", max_steps=8)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
    after = assistant_loss(model, tokenizer, conversation)
    assert after < before - 0.5, (before, after)

    trainer.save_model(tmp_path / "sft")  # the model folder and the tokenizer
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "sft").eval()
    again_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft")
    assert has_chat_format(again_tokenizer) and len(again_tokenizer) == len(tokenizer)
    assert assistant_loss(again, again_tokenizer, conversation) == pytest.approx(after, abs=1e-5)
