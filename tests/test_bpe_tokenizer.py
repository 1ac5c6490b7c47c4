"""`hf-nanogpt prepare --tokenizer bpe:VOCAB` (issue 26): a byte-level BPE of GPT-2's kind trained on the train
split only, lossless on any UTF-8, loaded by transformers alone, encoded in parallel like GPT-2's, carried into
the trainer's model folder; and the tokens-per-byte line prepare prints for every tokenizer."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer, pipeline

from helpers import BLOCK_HF_NANOGPT, FIXTURES, tiny
from hf_nanogpt import cli
from hf_nanogpt.data.encoding import cut_rule
from hf_nanogpt.data.tokens import TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.tokenization import GPT2_EOS, gpt2_tokenizer, is_gpt2_bpe, load_tokenizer, train_bpe_tokenizer
from hf_nanogpt.train import train

SHAKESPEARE = (FIXTURES / "shakespeare_char" / "input_head.txt").read_text(encoding="utf-8")  # 100,000 characters
# what a byte-level BPE must give back byte for byte: accents, Devanagari, emoji (4 bytes, and a ZWJ sequence),
# control characters, white space of every kind, and <|endoftext|> written in the text
MIXED = [
    "¿Qué tal, señor Núñez? Él comió piña y jalapeños en Logroño.",
    "नमस्ते दुनिया, यह एक परीक्षा है।",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 in one line",
    "control \x00\x01\x07\x1b[0m\x7f and \t tabs \r\n\x0b\x0c\x85\u2028 breaks",
    f"the text says {GPT2_EOS} in the middle, and {GPT2_EOS[:5]} half of it",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "   leading and trailing spaces   \n\n\n",
]
TRAIN_WORD, VAL_WORD = " lighthouse", " quokkazanzibar"


def ordinary(tokenizer, text: str) -> list[int]:
    """Ids of `text` with special tokens in it read as text, as `prepare` encodes documents."""
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    try:
        return backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = False


@pytest.fixture(scope="module")
def trained():
    return train_bpe_tokenizer((SHAKESPEARE[i : i + 5_000] for i in range(0, len(SHAKESPEARE), 5_000)), 400)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Ten documents: nine train (Shakespeare, mixed UTF-8, a frequent word), the tenth validates (prepare's
    rule for a folder of documents) and alone holds VAL_WORD, many times."""
    folder = tmp_path_factory.mktemp("corpus") / "docs"
    folder.mkdir()
    for i in range(9):
        lines = [SHAKESPEARE[i * 6_000 : (i + 1) * 6_000], *MIXED, (TRAIN_WORD * 20 + "\n") * 10]
        (folder / f"{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    (folder / "9.txt").write_text(SHAKESPEARE[60_000:64_000] + (VAL_WORD * 20 + "\n") * 15, encoding="utf-8")
    return folder


def test_a_trained_bpe_is_gpt2s_kind_and_lossless_on_any_utf8(trained):
    assert len(trained) == 400  # as asked: 256 bytes, <|endoftext|> and 143 merges
    eot = trained.convert_tokens_to_ids(GPT2_EOS)
    assert trained.bos_token_id == trained.eos_token_id == trained.unk_token_id == trained.pad_token_id == eot
    assert cut_rule(trained) == "newline" and is_gpt2_bpe(trained)  # cut in parallel; GGUF's gpt2 vocabulary
    for text in [*MIXED, "".join(MIXED)]:
        ids = ordinary(trained, text)
        assert trained.decode(ids) == text, text
        assert eot not in ids  # <|endoftext|> written in a document is text
    assert trained(GPT2_EOS).input_ids == [eot]  # called directly, as GPT-2's tokenizer reads it
    small = train_bpe_tokenizer(["abab abab"], 600)  # a text with few pairs: as many tokens as it allows
    assert 257 < len(small) < 600 and small.decode(ordinary(small, MIXED[1])) == MIXED[1]


def test_transformers_alone_loads_it_with_the_same_ids(trained, tmp_path):
    trained.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    code = BLOCK_HF_NANOGPT + (
        "import json, sys\nfrom transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\ntexts = json.loads(sys.argv[2])\n"
        "print(json.dumps([[tok(t).input_ids, tok.decode(tok(t).input_ids)] for t in texts]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(MIXED)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == [[trained(t).input_ids, t] for t in MIXED]


@pytest.mark.parametrize("spec", ["bpe:abc", "bpe:", "bpe:100", "bpe:257", "bpe:-300", "bpe:2000000"])
def test_bad_vocab_specs_are_refused_before_any_work(spec, tmp_path, capsys):
    (tmp_path / "input.txt").write_text("hello world\n" * 100)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare", str(tmp_path / "input.txt"), str(tmp_path / "out"), "--tokenizer", spec])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "expected bpe:VOCAB" in err and "258 (the 256 bytes" in err, err
    assert not (tmp_path / "out").exists()


def test_prepare_trains_on_the_train_split_only_and_encodes_as_the_saved_tokenizer(corpus, tmp_path):
    settings = dict(tokenizer="bpe:500", max_memory="16KB", log=lambda line: None)  # pieces of 4,096 characters
    runs = {n: prepare(corpus, tmp_path / f"np{n}", num_proc=n, **settings) for n in (1, 2)}
    took = {n: runs[n].pop("tokenizer_training") for n in (1, 2)}  # seconds differ; bytes and threads do not
    assert took[1]["bytes"] == took[2]["bytes"] > 0 and (took[1]["threads"], took[2]["threads"]) == (1, 2)
    assert runs[1] == {**runs[2], "source": runs[1]["source"]}
    saved = {n: (tmp_path / f"np{n}" / "tokenizer" / "tokenizer.json").read_text() for n in (1, 2)}
    assert saved[1] == saved[2]  # the same BPE from one thread or two
    files = {n: {s: (tmp_path / f"np{n}" / f"{s}.bin").read_bytes() for s in ("train", "val")} for n in (1, 2)}
    assert files[1] == files[2]

    out = tmp_path / "np2"
    info = json.loads((out / "data_info.json").read_text())
    assert info["tokenizer"] == "bpe:500" and info["tokenizer_dir"] == "tokenizer" and info["vocab_size"] == 500
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert len(tokenizer) == 500 and cut_rule(tokenizer) == "newline"
    # the ids: each document encoded whole by the saved tokenizer, <|endoftext|> after each
    documents = [(corpus / f"{i}.txt").read_text(encoding="utf-8") for i in range(10)]
    eot = tokenizer.convert_tokens_to_ids(GPT2_EOS)
    expected = {"train": [], "val": []}
    for i, document in enumerate(documents):
        expected["val" if i == 9 else "train"] += ordinary(tokenizer, document) + [eot]
    assert min(map(len, documents[:9])) > 2 * 4_096  # each document cut into segments of pieces of 4,096 characters
    assert {s: np.frombuffer(files[2][s], dtype=np.uint16).tolist() for s in expected} == expected
    # trained on the train split only: its frequent word is one token; the val split's is not, though it would be
    assert len(tokenizer.tokenize(TRAIN_WORD)) == 1 and len(tokenizer.tokenize(VAL_WORD)) > 2
    on_everything = train_bpe_tokenizer(documents, 500)
    assert len(on_everything.tokenize(VAL_WORD)) == 1
    # the data folder's tokenizer is the trained one
    assert TokenData(out).tokenizer().get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="names a BPE to train.*OUT_DIR/tokenizer"):
        load_tokenizer("bpe:500")
    # the GPT-2 figure counts what `prepare --tokenizer gpt2` writes on the val split, <|endoftext|> included
    gpt2 = prepare(corpus, tmp_path / "gpt2", tokenizer="gpt2", num_proc=2, log=lambda line: None)
    val_bytes = len(documents[9].encode("utf-8"))
    assert info["bytes"] == {"train": sum(len(d.encode("utf-8")) for d in documents[:9]), "val": val_bytes}
    assert info["val_tokens_per_byte"] == {
        "bpe:500": runs[2]["val"] / val_bytes,
        "gpt2": gpt2["val"] / val_bytes,
        "char": len(documents[9]) / val_bytes,
    }
    assert gpt2["val"] == len(ordinary(gpt2_tokenizer(), documents[9])) + 1
    assert gpt2["val_tokens_per_byte"] == {"gpt2": gpt2["val"] / val_bytes, "char": len(documents[9]) / val_bytes}


def test_the_tokens_per_byte_line(tmp_path):
    text = "".join(f"Zorblax quaffed {i % 7} flurbish grommets; the snarkel glimmed.\n" for i in range(2_000))
    (tmp_path / "input.txt").write_text(text)
    val = text[int(len(text) * 0.9) :]
    printed, per_byte = {}, {}
    for spec in ("bpe:400", "gpt2", "char"):
        lines = []
        out = tmp_path / spec.replace(":", "_")
        info = prepare(tmp_path / "input.txt", out, tokenizer=spec, log=lines.append)
        printed[spec], per_byte[spec] = lines[-1], info["val_tokens_per_byte"]
        assert info["bytes"] == {"train": int(len(text) * 0.9), "val": len(val)}  # ASCII: a byte a character
    number = r"(\d+\.\d{3})"
    match = re.fullmatch(
        rf"val: {number} tokens/byte with bpe:400; GPT-2 BPE would spend {number}, a char vocabulary {number}",
        printed["bpe:400"],
    )
    assert match, printed["bpe:400"]
    bpe, gpt2, char = map(float, match.groups())
    assert bpe < gpt2 < char == 1.0  # a BPE of this text's own (made-up) words spends least
    assert gpt2 == round(len(ordinary(gpt2_tokenizer(), val)) / len(val), 3)
    assert printed["gpt2"] == f"val: {gpt2:.3f} tokens/byte with gpt2; a char vocabulary would spend 1.000"
    assert printed["char"] == f"val: 1.000 tokens/byte with char; GPT-2 BPE would spend {gpt2:.3f}"
    assert per_byte["char"]["gpt2"] == per_byte["bpe:400"]["gpt2"] == per_byte["gpt2"]["gpt2"]


def test_gpt2s_figure_beside_char_level_is_gpt2s_own(tmp_path):
    """Counted beside another tokenizer's encoding, GPT-2's tokens per byte are exactly what encoding with GPT-2
    gives: char level, which may cut its text anywhere, cuts it where GPT-2 may too (not inside 'hello')."""
    (tmp_path / "input.txt").write_text("hello world, " * 20_000 + "\n")
    per_byte = {
        spec: prepare(tmp_path / "input.txt", tmp_path / spec, tokenizer=spec, log=print, max_memory="16KB")[
            "val_tokens_per_byte"
        ]["gpt2"]
        for spec in ("char", "gpt2")
    }
    assert per_byte["char"] == per_byte["gpt2"]


def test_the_trainer_puts_the_trained_tokenizer_into_its_model_folder(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    source = FIXTURES / "shakespeare_char" / "input_head.txt"
    assert cli.main(["prepare", str(source), str(data), "--tokenizer", "bpe:400", "--num_proc", "2"]) == 0
    train(tiny(data, out, max_iters=2, lr_decay_iters=2, warmup_iters=1, eval_interval=2, eval_iters=1, compile=False))
    trained = AutoTokenizer.from_pretrained(data / "tokenizer")
    carried = AutoTokenizer.from_pretrained(out)
    assert carried.get_vocab() == trained.get_vocab() and len(carried) == 400
    assert all(carried(text).input_ids == trained(text).input_ids for text in MIXED)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] >= 400 and config["eos_token_id"] == trained.eos_token_id
    generator = pipeline("text-generation", model=str(out))
    assert generator("ROMEO:", max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith("ROMEO:")
    gguf = pytest.importorskip("gguf")
    from hf_nanogpt.conversion.gguf import export_gguf

    reader = gguf.GGUFReader(export_gguf(out, tmp_path / "model.gguf", log=lambda *a: None))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    tokens = fields["tokenizer.ggml.tokens"]
    assert all(tokens[i] == token for token, i in trained.get_vocab().items())
    assert len(fields["tokenizer.ggml.merges"]) == 400 - 257


@pytest.mark.parametrize("kind", ["jsonl stream", "saved data set"])
def test_data_sets_and_streams_train_on_their_train_split(kind, tmp_path):
    """A stream's val documents are every (1/val_fraction)-th; a saved data set's the last ones: either way the
    trainer sees none of them."""
    datasets = pytest.importorskip("datasets")
    val = [i % 4 == 3 for i in range(8)] if kind == "jsonl stream" else [i >= 6 for i in range(8)]
    documents = [
        SHAKESPEARE[i * 3_000 : (i + 1) * 3_000] + (VAL_WORD if is_val else TRAIN_WORD) * 100
        for i, is_val in enumerate(val)
    ]
    if kind == "jsonl stream":
        source = tmp_path / "rows.jsonl"
        source.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents), encoding="utf-8")
    else:
        source = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(source))
    info = prepare(source, tmp_path / "out", tokenizer="bpe:400", val_fraction=0.25, num_proc=2, log=lambda line: None)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    assert len(tokenizer.tokenize(TRAIN_WORD)) == 1 and len(tokenizer.tokenize(VAL_WORD)) > 2
    assert info["bytes"]["val"] == sum(len(doc.encode("utf-8")) for doc, is_val in zip(documents, val) if is_val)
