"""What a model's two embedding tables learned: wpe (one vector per position) as pictures, wte (one vector per
token id) as nearest neighbours. `hf-nanogpt inspect` calls these; docs/embeddings.md explains them.

    wpe = model.transformer.wpe.weight                       # (block_size, n_embd)
    wpe_similarity(wpe)                                      # (block_size, block_size) cosine similarities
    principal_components(wpe, 3)                             # (block_size, 3) projections, explained fractions
    nearest_neighbours(wte, [262], k=8, searched=50257)      # [[(262, 1.0), (id, similarity), ...]]
    write_pictures(wpe, "out/demo-embeddings")               # wpe.png, wpe_components.png, wpe_norms.png
"""

import re
from pathlib import Path

import torch

from .plots import png, pyplot

WPE_PLOT = "wpe.png"  # the position-similarity heatmap: also the picture a training run's model card shows
COMPONENTS_PLOT = "wpe_components.png"
NORMS_PLOT = "wpe_norms.png"
# word-like text: a leading space and two or more letters (in GPT-2's BPE, a whole word; the lowest such ids
# are its earliest merges, the most frequent words: " the", " an", " to", " of", " in", " and", ...)
WORD = re.compile(r" [^\W\d_]{2,}")
LETTER = re.compile(r"[^\W\d_]")


def padding_rows(vocab_size: int, tokenizer) -> range:
    """Rows of wte no token maps to: nanoGPT pads the vocabulary to a multiple of 64 (50257 -> 50304). Ids >= the
    tokenizer's size are never looked up as input; through the tied lm_head their rows only learn to score low."""
    return range(min(len(tokenizer), vocab_size), vocab_size)


def wpe_similarity(wpe: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of positions: (block_size, n_embd) -> (block_size, block_size)."""
    unit = torch.nn.functional.normalize(wpe.detach().float(), dim=1)
    return unit @ unit.T


def principal_components(weights: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of `weights` (N, n_embd) projected on their first `k` principal components -> ((N, k), the
    fraction of the variance each component explains (k,)). Signs are fixed so that the first row's projection is
    not positive, so that the same weights always give the same picture."""
    x = weights.detach().double()
    x = x - x.mean(dim=0)
    # the eigenvectors of the (n_embd, n_embd) covariance, on one thread: LAPACK's threads gain nothing at this
    # size and cost seconds when the cores are busy (0.1 s on one thread, 2 to 11 s on two, for GPT-2's 768)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        variances, axes = torch.linalg.eigh(x.T @ x)  # ascending
    finally:
        torch.set_num_threads(threads)
    k = min(k, variances.numel())
    top = variances.flip(0)[:k].clamp_min(0)
    projections = x @ axes.flip(1)[:, :k]  # (N, k)
    projections = projections * torch.where(projections[0] > 0, -1.0, 1.0).double()
    explained = top / variances.clamp_min(0).sum().clamp_min(torch.finfo(torch.float64).tiny)
    projections, explained = projections.float(), explained.float()
    return projections, explained


def nearest_neighbours(
    wte: torch.Tensor, ids: list[int], k: int = 8, searched: int | None = None
) -> list[list[tuple[int, float]]]:
    """For each id, the `k` rows of wte (V, n_embd) with the highest cosine similarity to its row, as (id, similarity),
    most similar first (the id itself leads, at 1.0). Only rows below `searched` are candidates: pass the
    tokenizer's size to leave the vocabulary padding out."""
    unit = torch.nn.functional.normalize(wte.detach().float()[:searched], dim=1)  # (V', n_embd)
    if any(not 0 <= i < unit.shape[0] for i in ids):
        raise ValueError(f"token ids must be in 0..{unit.shape[0] - 1} (the searched rows), got {ids}")
    similarity = unit[ids] @ unit.T  # (len(ids), V')
    values, indices = similarity.topk(min(k, unit.shape[0]), dim=1)
    return [list(zip(row_ids.tolist(), row_values.tolist())) for row_ids, row_values in zip(indices, values)]


def common_token_ids(tokenizer, n: int = 8) -> list[int]:
    """Tokens to show by default: the lowest ids whose text is word-like (WORD: in GPT-2's BPE its most frequent
    words), or, for vocabularies with fewer of those (char level), the lowest ids that are letters."""
    words, letters = [], []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if WORD.fullmatch(text):
            words.append(i)
            if len(words) == n:
                return words
        elif LETTER.fullmatch(text.strip()) and len(letters) < n:
            letters.append(i)
    return (words + letters)[:n] or list(range(min(n, len(tokenizer))))


def token_ids(tokenizer, texts: list[str]) -> list[int]:
    """The id of each text, which must be exactly one token of the tokenizer (a ValueError says why not)."""
    from .tokenization import encode_text

    ids = []
    for text in texts:
        encoded = encode_text(tokenizer, text, f"--tokens entry {text!r}")
        if len(encoded) != 1:
            pieces = [tokenizer.decode([i]) for i in encoded]
            raise ValueError(
                f"--tokens entry {text!r} is {len(encoded)} tokens, {pieces!r}, not one: give a single token "
                f"(in GPT-2's BPE a word usually starts with its space: ' the', not 'the')."
            )
        ids.append(encoded[0])
    return ids


def similarity_plot(wpe: torch.Tensor) -> bytes:
    """A PNG heatmap of wpe_similarity: position on both axes, cosine similarity in colour (-1 to 1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    image = ax.imshow(wpe_similarity(wpe).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    ax.set_title("wpe: cosine similarity between positions")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return png(fig)


def components_plot(wpe: torch.Tensor, k: int = 3) -> bytes:
    """A PNG of each position's projection on wpe's first `k` principal components, against position."""
    plt = pyplot()
    projections, explained = principal_components(wpe, k)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for j in range(projections.shape[1]):
        ax.plot(projections[:, j].numpy(), label=f"PC{j + 1} ({100 * explained[j].item():.1f} % of variance)")
    ax.set_xlabel("position")
    ax.set_ylabel("projection")
    ax.set_title("wpe: principal components across positions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return png(fig)


def norms_plot(wpe: torch.Tensor) -> bytes:
    """A PNG of the L2 norm of each position's vector."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(wpe.detach().float().norm(dim=1).numpy())
    ax.set_xlabel("position")
    ax.set_ylabel("norm")
    ax.set_title("wpe: norm of each position's vector")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def write_pictures(wpe: torch.Tensor, out_dir: str | Path, components: int = 3) -> list[Path]:
    """WPE_PLOT, COMPONENTS_PLOT and NORMS_PLOT of wpe (block_size, n_embd) in out_dir (created if needed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the pictures.")
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = {
        WPE_PLOT: similarity_plot(wpe),
        COMPONENTS_PLOT: components_plot(wpe, components),
        NORMS_PLOT: norms_plot(wpe),
    }
    for name, content in pictures.items():
        (out_dir / name).write_bytes(content)
    return [out_dir / name for name in pictures]


def shown(tokenizer, i: int) -> str:
    return repr(tokenizer.decode([i]))


def report(model, tokenizer, ids: list[int] | None = None, k: int = 8) -> str:
    """The text `hf-nanogpt inspect` prints: the shapes, the padding rows, and the neighbours of each id in wte."""
    wte = model.get_input_embeddings().weight
    wpe = model.transformer.wpe.weight
    vocab_size, n_embd = wte.shape
    padding = padding_rows(vocab_size, tokenizer)
    lines = [
        f"wte: {vocab_size} token vectors of {n_embd} numbers (the tokenizer has {len(tokenizer)} tokens); "
        f"wpe: {wpe.shape[0]} position vectors",
    ]
    if padding:
        lines.append(
            f"rows {padding.start}..{padding.stop - 1} of wte ({len(padding)}) are vocabulary padding: no token has "
            f"these ids (never an input; as rows of the tied lm_head they only learn to score low), so they are left "
            f"out of the neighbour search"
        )
    else:
        lines.append("wte has no padding rows: every row is a token")
    ids = common_token_ids(tokenizer) if ids is None else ids
    lines.append(f"nearest neighbours in wte by cosine similarity (of {padding.start} token rows):")
    for i, neighbours in zip(ids, nearest_neighbours(wte, ids, k + 1, searched=padding.start)):
        others = ", ".join(f"{shown(tokenizer, j)} {s:.2f}" for j, s in neighbours if j != i)
        lines.append(f"  {shown(tokenizer, i)} ({i}): {others}")
    return "\n".join(lines)


__all__ = [
    "COMPONENTS_PLOT",
    "NORMS_PLOT",
    "WPE_PLOT",
    "common_token_ids",
    "components_plot",
    "nearest_neighbours",
    "norms_plot",
    "padding_rows",
    "principal_components",
    "report",
    "similarity_plot",
    "token_ids",
    "wpe_similarity",
    "write_pictures",
]
