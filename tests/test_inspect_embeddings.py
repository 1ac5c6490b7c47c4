"""`hf-nanogpt inspect` and hf_nanogpt.inspect_embeddings: wpe's pictures, wte's neighbours, the padding rows left
out, clear errors; and the wpe picture a training run's model card shows."""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from helpers import tiny, tiny_model
from hf_nanogpt import cli
from hf_nanogpt.inspect_embeddings import (
    COMPONENTS_PLOT,
    NORMS_PLOT,
    WPE_PLOT,
    common_token_ids,
    nearest_neighbours,
    padding_rows,
    principal_components,
    token_ids,
    wpe_similarity,
)
from hf_nanogpt.model_card import card_for_repo, render_model_card
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import char_tokenizer, gpt2_tokenizer

CHARS = sorted(set("abcdefghij klmnop.,"))
PADDING = 6  # rows past the tokenizer's vocabulary, as nanoGPT pads 50257 to 50304
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def padded_folder(tmp_path_factory) -> Path:
    """A char-level model folder whose wte has PADDING rows more than its tokenizer, the first a copy of 'a''s
    vector (so a neighbour search that kept padding rows would find it at similarity 1)."""
    model = tiny_model(vocab_size=len(CHARS) + PADDING, block_size=24)
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[len(CHARS)] = wte[CHARS.index("a")]
    folder = tmp_path_factory.mktemp("inspect") / "model"
    save_model_folder(model, folder, char_tokenizer(CHARS))
    return folder


def inspect(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = cli.main(["inspect", *argv])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_inspect_writes_pictures_and_prints_neighbours(padded_folder, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "pictures"
    status, printed, _ = inspect(
        [str(padded_folder), "--out", str(out), "--tokens", "a", "k", "--neighbours", "3"], capsys
    )
    assert status == 0
    sizes = {WPE_PLOT: (450, 550), COMPONENTS_PLOT: (350, 600), NORMS_PLOT: (350, 600)}  # (height, width) in pixels
    for name, size in sizes.items():
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE and f"wrote {path}" in printed
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == size and image.std() > 0, name  # drawn, not blank
    n = len(CHARS)
    assert f"rows {n}..{n + PADDING - 1} of wte ({PADDING}) are vocabulary padding" in printed
    line_a = next(line for line in printed.splitlines() if line.startswith(f"  'a' ({CHARS.index('a')}):"))
    assert line_a.count(", ") == 2 and "1.00" not in line_a  # 3 neighbours, itself and the padding copy left out
    assert any(line.startswith(f"  'k' ({CHARS.index('k')}):") for line in printed.splitlines())


def test_default_tokens_are_words_or_letters():
    assert [gpt2_tokenizer().decode([i]) for i in common_token_ids(gpt2_tokenizer(), 6)] == [
        " the",
        " an",
        " to",
        " of",
        " in",
        " and",
    ]
    assert common_token_ids(char_tokenizer(CHARS), 4) == [CHARS.index(c) for c in "abcd"]


def test_similarity_is_symmetric_with_ones_on_its_diagonal():
    wpe = torch.randn(24, 16)
    similarity = wpe_similarity(wpe)
    assert similarity.shape == (24, 24)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(24))
    torch.testing.assert_close(similarity, similarity.T)
    assert similarity.abs().max() <= 1 + 1e-5


def test_principal_components_match_an_svd():
    wpe = torch.randn(40, 16) * torch.linspace(3, 0.1, 16)  # distinct variances along the axes
    projections, explained = principal_components(wpe, 3)
    centered = (wpe - wpe.mean(dim=0)).double()
    u, s, _ = torch.linalg.svd(centered, full_matrices=False)
    torch.testing.assert_close(projections.abs(), (u[:, :3] * s[:3]).abs().float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(explained, (s[:3] ** 2 / (s**2).sum()).float())
    assert projections[0].le(0).all()  # signs fixed: the same weights, the same picture


def test_neighbours_start_with_the_token_and_skip_padding_rows():
    wte = torch.randn(20, 8)
    wte[17] = wte[3] * 2  # a padding row pointing the same way as token 3
    neighbours = nearest_neighbours(wte, [3, 5], k=4, searched=16)
    for i, row in zip([3, 5], neighbours):
        assert row[0][0] == i and row[0][1] == pytest.approx(1.0) and len(row) == 4
        assert all(j < 16 for j, _ in row) and [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    assert nearest_neighbours(wte, [3], k=2)[0][1][0] == 17  # searched over every row, the copy is found
    assert padding_rows(20, char_tokenizer("abcdefghijklmnop")) == range(16, 20)
    assert not padding_rows(16, char_tokenizer("abcdefghijklmnop"))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tokens", "€"], "has characters this model's char-level vocabulary does not have: '€'"),
        (["--tokens", "ab"], "'ab' is 2 tokens"),
        (["--neighbours", "0"], "--neighbours must be at least 1"),
    ],
)
def test_bad_tokens_are_clear_errors(padded_folder, tmp_path, capsys, argv, expected):
    status, _, err = inspect([str(padded_folder), "--out", str(tmp_path / "p"), *argv], capsys)
    assert status == 2 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "p").exists()


def test_a_folder_without_a_model_and_a_file_as_out_are_clear_errors(padded_folder, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no model here")
    status, _, err = inspect([str(tmp_path / "notes"), "--out", str(tmp_path / "p")], capsys)
    assert status == 2 and err.startswith("error: ") and str(tmp_path / "notes") in err, err
    (tmp_path / "file").write_text("")
    status, _, err = inspect([str(padded_folder), "--out", str(tmp_path / "file")], capsys)
    assert status == 2 and err.startswith(f"error: --out {tmp_path / 'file'} is a file"), err


def test_token_ids_of_gpt2_words():
    assert token_ids(gpt2_tokenizer(), [" the", " and"]) == [262, 290]
    with pytest.raises(ValueError, match="' hello world' is 2 tokens"):
        token_ids(gpt2_tokenizer(), [" hello world"])


# -- the picture a training run leaves beside its loss curve, and on the Hub ----------------------------------


def test_a_trained_model_folder_shows_its_wpe_picture(char_data, tmp_path):
    from hf_nanogpt.train import train

    out = tmp_path / "out"
    train(tiny(char_data, out, max_iters=4, eval_interval=2, eval_iters=1, lr_decay_iters=4, warmup_iters=1))
    assert (out / "wpe.png").read_bytes()[:8] == PNG_SIGNATURE and (out / "loss.png").is_file()
    card = (out / "README.md").read_text()
    assert "![cosine similarity between the position vectors of wpe](wpe.png)" in card
    assert card.index("(loss.png)") < card.index("(wpe.png)") < card.index("## Usage")
    assert "(wpe.png)" in card_for_repo(out, "alice/trained")  # kept in the card a push uploads, with the file


def test_a_pushed_card_gains_the_wpe_picture_of_its_folder(padded_folder, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(padded_folder, folder)
    card = render_model_card(title="m", summary="A model.", sections={}, model_ref=str(folder))
    (folder / "README.md").write_text(card)
    assert "(wpe.png)" not in card_for_repo(folder, "alice/m")
    (folder / "wpe.png").write_bytes(PNG_SIGNATURE)
    card = ModelCard(card_for_repo(folder, "alice/m")).text
    assert "## Position embedding" in card and card.index("(wpe.png)") < card.index("## Usage")
