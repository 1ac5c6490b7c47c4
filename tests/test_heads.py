"""GPT-2's task heads on the nanoGPT trunk: sequence classification (last non-pad token), token classification
and extractive question answering, through their Auto classes, pipelines and remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    pipeline,
)

from helpers import BLOCK_HF_NANOGPT, tiny_model
from hf_nanogpt import (
    NanoGPTForQuestionAnswering,
    NanoGPTForSequenceClassification,
    NanoGPTForTokenClassification,
)
from hf_nanogpt.modeling_nanogpt import AUTO_MAP
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

HEADS = {
    AutoModelForSequenceClassification: NanoGPTForSequenceClassification,
    AutoModelForTokenClassification: NanoGPTForTokenClassification,
    AutoModelForQuestionAnswering: NanoGPTForQuestionAnswering,
}
PAD = 50256  # GPT-2's eos, the pad token our folders get


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A causal LM folder with the GPT-2 BPE tokenizer, as a conversion or the trainer writes it."""
    model = tiny_model(seed=3, vocab_size=50304, block_size=64)
    folder = tmp_path_factory.mktemp("heads") / "lm"
    save_model_folder(model, folder, gpt2_tokenizer())
    return model, folder


def hidden(model, ids, **kwargs):
    with torch.no_grad():
        return model.transformer(ids, **kwargs).last_hidden_state


def test_every_auto_class_loads_a_causal_lm_folder(lm_folder):
    lm, folder = lm_folder
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_nanogpt.NanoGPTConfig",
        **{auto: f"modeling_nanogpt.{name}" for auto, name in AUTO_MAP.items()},
    }
    for auto, cls in HEADS.items():
        model = auto.from_pretrained(folder, num_labels=3)
        assert type(model) is cls
        # the trunk comes from the checkpoint, the head starts fresh (as with GPT-2)
        for name, tensor in lm.transformer.state_dict().items():
            assert torch.equal(model.transformer.state_dict()[name], tensor), name
        assert model.get_input_embeddings() is model.transformer.wte


def test_sequence_classification_reads_the_last_non_pad_token(lm_folder):
    _, folder = lm_folder
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    assert model.config.pad_token_id == PAD
    a, b = torch.tensor([[10, 11, 12, 13, 14]]), torch.tensor([[20, 21, 22]])
    alone = [model.score(hidden(model, row))[0, -1] for row in (a, b)]
    right = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, PAD, PAD]])
    left = torch.tensor([[10, 11, 12, 13, 14], [PAD, PAD, 20, 21, 22]])
    left_positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    with torch.no_grad():
        for batch, extra in ((right, {}), (left, {"position_ids": left_positions})):
            out = model(batch, attention_mask=(batch != PAD).long(), **extra)
            assert out.logits.shape == (2, 3)
            torch.testing.assert_close(out.logits, torch.stack(alone), atol=1e-5, rtol=1e-5)

        labels = torch.tensor([2, 0])
        loss = model(right, attention_mask=(right != PAD).long(), labels=labels).loss
        torch.testing.assert_close(loss, F.cross_entropy(torch.stack(alone), labels), atol=1e-5, rtol=1e-5)

    regression = NanoGPTForSequenceClassification(tiny_model(num_labels=1).config).eval()
    with torch.no_grad():
        out = regression(a, labels=torch.tensor([0.5]))
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(), torch.tensor(0.5)))


def test_sequence_classification_without_a_pad_token_takes_one_row():
    model = NanoGPTForSequenceClassification(tiny_model(num_labels=2).config).eval()
    assert model.config.pad_token_id is None
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="padding token"):
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]))


def test_token_classification_logits_and_loss(lm_folder):
    _, folder = lm_folder
    model = AutoModelForTokenClassification.from_pretrained(folder, num_labels=4)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    labels = torch.tensor([[0, 1, -100, 3], [2, -100, 1, 0]])
    model.eval()
    with torch.no_grad():
        out = model(ids, labels=labels)
        expected = model.score(hidden(model, ids))
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected.view(-1, 4), labels.view(-1), ignore_index=-100))
    assert model.dropout.p == 0.1
    model.train()  # dropout on the head's input in training only
    assert not torch.equal(model(ids).logits, out.logits)


def test_question_answering_start_and_end(lm_folder):
    _, folder = lm_folder
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    starts, ends = torch.tensor([1, 4]), torch.tensor([3, 9])
    with torch.no_grad():
        out = model(ids, start_positions=starts, end_positions=ends)
        start, end = model.qa_outputs(hidden(model, ids)).unbind(-1)
    torch.testing.assert_close(out.start_logits, start)
    torch.testing.assert_close(out.end_logits, end)
    torch.testing.assert_close(out.loss, (F.cross_entropy(start, starts) + F.cross_entropy(end, ends)) / 2)


def test_heads_train(lm_folder):
    """A few AdamW steps lower each head's loss; gradients reach the trunk."""
    _, folder = lm_folder
    ids = torch.randint(0, 50257, (4, 10), generator=torch.Generator().manual_seed(1))
    cases = {
        AutoModelForSequenceClassification: {"labels": torch.tensor([0, 1, 2, 1])},
        AutoModelForTokenClassification: {
            "labels": torch.randint(0, 3, (4, 10), generator=torch.Generator().manual_seed(2))
        },
        AutoModelForQuestionAnswering: {
            "start_positions": torch.tensor([0, 2, 4, 6]),
            "end_positions": torch.tensor([1, 3, 5, 7]),
        },
    }
    for auto, targets in cases.items():
        torch.manual_seed(0)
        model = auto.from_pretrained(folder, num_labels=3).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(8):
            loss = model(ids, **targets).loss
            loss.backward()
            assert model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (auto.__name__, losses)


def test_pipelines(lm_folder):
    _, folder = lm_folder
    tokenizer = gpt2_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    [scores] = classify(["Hello world"])
    with torch.no_grad():
        probs = model(torch.tensor([tokenizer.encode("Hello world")])).logits.softmax(-1)[0]
    assert {s["label"]: round(s["score"], 5) for s in scores} == {
        model.config.id2label[i]: round(p.item(), 5) for i, p in enumerate(probs)
    }

    model = AutoModelForTokenClassification.from_pretrained(folder, num_labels=3).eval()
    tag = pipeline("token-classification", model=model, tokenizer=tokenizer)
    tokens = tag("Hello world")
    with torch.no_grad():
        best = model(torch.tensor([tokenizer.encode("Hello world")])).logits.argmax(-1)[0]
    # the pipeline leaves out tokens tagged as the "O" class; here labels are LABEL_0..2 and all are kept
    assert [t["word"] for t in tokens] == ["Hello", "Ġworld"]
    assert [t["entity"] for t in tokens] == [model.config.id2label[i.item()] for i in best]


REMOTE_HEADS = BLOCK_HF_NANOGPT + textwrap.dedent(
    """
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )
    lm_folder, classifier_folder, out_file = sys.argv[1:4]
    for auto in (AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoModelForQuestionAnswering):
        model = auto.from_pretrained(lm_folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(model).__name__ == "NanoGPT" + auto.__name__[len("AutoModel"):], type(model).__name__
    model = AutoModelForSequenceClassification.from_pretrained(classifier_folder, trust_remote_code=True).eval()
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 50256, 50256]])
    with torch.no_grad():
        torch.save(model(ids, attention_mask=(ids != 50256).long()).logits, out_file)
    """
)


def test_heads_as_remote_code_without_the_package(lm_folder, tmp_path):
    _, folder = lm_folder
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_HEADS)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "classifier"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 50256, 50256]])
    with torch.no_grad():
        assert torch.equal(
            torch.load(tmp_path / "out.pt"), classifier(ids, attention_mask=(ids != 50256).long()).logits
        )
