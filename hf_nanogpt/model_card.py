"""Model cards (README.md with YAML metadata) for every model folder this package writes or publishes."""

import ast
import json
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .inspect_embeddings import WPE_PLOT  # a training run's wpe similarity heatmap, shown as the loss plot is

# Model cards name Hub repos in their metadata. OpenAI's GPT-2 sizes by the names nanoGPT's init_from and
# older code use -> their Hub repo ids (base_model):
GPT2_HUB_IDS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
# nanoGPT's data/<dataset> -> the Hub dataset with that text (datasets); shakespeare*/prepare.py download
# the same tiny Shakespeare, openwebtext/prepare.py loads openwebtext
HUB_DATASETS = {
    "shakespeare_char": "karpathy/tiny_shakespeare",
    "shakespeare": "karpathy/tiny_shakespeare",
    "openwebtext": "Skylion007/openwebtext",
}


def hub_datasets(name: str | None) -> list[str] | None:
    """The card's `datasets` for a nanoGPT data set name: its Hub id when there is one."""
    return [HUB_DATASETS[name]] if name in HUB_DATASETS else None


def base_model_id(name: str | None) -> str | None:
    """The card's `base_model` for the model a run or conversion started from: a Hub id names it (GPT-2's
    short names as their current ids); a local path does not."""
    if not name or Path(name).exists():
        return None
    return GPT2_HUB_IDS.get(name, name)


LOSS_PLOT = "loss.png"  # a training run's loss curve, shown by the card when it sits beside it
TAGS = ["nanogpt", "hf_nanogpt"]


def usage_section(model_ref: str, prompt: str = "ROMEO:") -> str:
    """How to load the model, with and without this package installed."""
    return f"""## Usage

With the package (`pip install hf-nanogpt`):

```python
import hf_nanogpt  # registers the nanogpt model type
from transformers import pipeline
generator = pipeline("text-generation", model="{model_ref}")
print(generator({prompt!r})[0]["generated_text"])
```

Without it, through the code saved next to the weights:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{model_ref}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{model_ref}")
```

From the command line: `hf-nanogpt generate {model_ref} --prompt {prompt!r}`, or nanoGPT's sample.py
settings with `hf-nanogpt sample {model_ref}`.
"""


CHAT_HEADING = "Chat"
CHAT_TAGS = ["conversational"]


def chat_text(model_ref: str) -> str:
    """How to talk to a chat model (hf_nanogpt.chat's format): the turns it reads, and where it stops."""
    return f"""The model takes turns in ChatML, which its tokenizer's chat template writes:

```
<|im_start|>system
Be brief.<|im_end|>
<|im_start|>user
Hi<|im_end|>
<|im_start|>assistant
Hello!<|im_end|>
```

It writes the assistant's turn and ends it with `<|im_end|>`, where generation stops (the generation config's
`eos_token_id` is `[<|im_end|>, <|endoftext|>]`). Talk to it from the command line with
`hf-nanogpt chat {model_ref}`, or in Python:

```python
import hf_nanogpt  # registers the nanogpt model type
from transformers import pipeline
chat = pipeline("text-generation", model="{model_ref}")
messages = [{{"role": "user", "content": "Hi"}}]
print(chat(messages)[0]["generated_text"][-1]["content"])
```"""


def loss_plot_section(filename: str = LOSS_PLOT) -> str:
    return f"## Training loss\n\n![training and validation loss]({filename})"


WPE_HEADING = "Position embedding"


def wpe_plot_text(filename: str = WPE_PLOT) -> str:
    return (
        f"![cosine similarity between the position vectors of wpe]({filename})\n\n"
        "Cosine similarity between every pair of positions' learned vectors in `wpe` (red 1, blue -1). At "
        "initialisation only the diagonal is red; training usually makes nearby positions alike, widening it into "
        "a band (`hf-nanogpt inspect` draws this and more)."
    )


def wpe_plot_section(filename: str = WPE_PLOT) -> str:
    return f"## {WPE_HEADING}\n\n{wpe_plot_text(filename)}"


PLOT_SECTIONS = {LOSS_PLOT: loss_plot_section, WPE_PLOT: wpe_plot_section}  # picture file -> its card section


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` (dicts) in the order of `columns`."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows)


def field_table(fields: dict, name: str = "field") -> str:
    """A two-column table, `name` and value, of `fields` in order: a card's source or its settings."""
    return table([{name: k, "value": v} for k, v in fields.items()], [name, "value"])


def model_shape(n_layer: int, n_head: int, n_embd: int, block_size: int) -> str:
    return f"{n_layer} layers, {n_head} heads, {n_embd} dimensions, context {block_size}"


def render_model_card(
    title: str,
    summary: str,
    sections: dict[str, str],
    model_ref: str,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    prompt: str = "ROMEO:",
    loss_plot: str | None = None,
) -> str:
    """README.md text: YAML metadata the Hub reads, the title, a summary, `sections` (heading -> body),
    the loss plot (an image file beside the card), usage, and limitations."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[*TAGS, *(tags or [])],
        base_model=base_model,
        datasets=datasets or None,
    )
    body = "\n\n".join(f"## {heading}\n\n{text.strip()}" for heading, text in sections.items())
    if loss_plot:
        body += "\n\n" + loss_plot_section(loss_plot)
    limitations = (
        "## Limitations\n\nA small GPT trained for a narrow purpose: expect fluent-looking but unreliable "
        "text, and the biases of its training data. Its context is `block_size` tokens; longer inputs raise "
        "an error."
    )
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{summary.strip()}\n\n{body}\n\n"
        f"{usage_section(model_ref, prompt)}\n{limitations}\n"
    )
    return str(ModelCard(content))


# the first lines of `usage_section`, from which the model reference and prompt of a card are read back
USAGE_REF = re.compile(
    r'pipeline\("text-generation", model="(?P<ref>[^"\n]*)"\)\nprint\(generator\((?P<prompt>[^\n]*)\)\[0\]'
)


def has_metadata(card_text: str) -> bool:
    """Whether README.md text starts with a YAML metadata block the Hub can read."""
    return card_text.startswith("---") and bool(ModelCard(card_text).data.to_dict())


def card_for_repo(folder: str | Path, repo_id: str) -> str:
    """The README.md to publish `folder` as `repo_id`.

    A card with metadata (as this package writes) is kept, with its usage examples pointed at `repo_id`
    instead of the local folder, the metadata the Hub needs filled in where missing, and the pictures of
    PLOT_SECTIONS (loss curve, wpe) added when the folder has one the card does not show yet. A folder with no
    card, or a README without metadata, gets a card rendered from config.json (an existing README's text is kept
    in it).
    """
    folder = Path(folder)
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    plot = LOSS_PLOT if (folder / LOSS_PLOT).is_file() else None
    if not has_metadata(text):
        text = generic_card(folder, repo_id, notes=text, loss_plot=plot)
    match = USAGE_REF.search(text)
    if match:
        prompt = ast.literal_eval(match["prompt"])
        text = text.replace(usage_section(match["ref"], prompt), usage_section(repo_id, prompt))
        text = text.replace(chat_text(match["ref"]), chat_text(repo_id))
    for picture, picture_section in PLOT_SECTIONS.items():
        if (folder / picture).is_file() and f"]({picture})" not in text:
            # before the usage section, where render_model_card puts it; at the end of a card without one
            usage = "\n## Usage\n"
            section = f"\n{picture_section(picture)}\n"
            text = text.replace(usage, section + usage, 1) if usage in text else text.rstrip("\n") + "\n" + section
    card = ModelCard(text)
    data = card.data
    data.library_name = data.library_name or "transformers"
    data.pipeline_tag = data.pipeline_tag or "text-generation"
    data.tags = [*(data.tags or []), *(t for t in TAGS if t not in (data.tags or []))]
    return str(card)


def generic_card(folder: Path, repo_id: str, notes: str = "", loss_plot: str | None = None) -> str:
    """A card for a folder that came without one: what config.json says the model is."""
    config = json.loads((folder / "config.json").read_text())
    shape = {
        k: config.get(k)
        for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "activation_function")
    }
    sections = {"Model": field_table(shape)}
    if notes.strip():
        sections["Notes"] = notes
    return render_model_card(
        title=repo_id.split("/")[-1],
        summary=(
            f"A GPT in nanoGPT's architecture "
            f"({model_shape(shape['n_layer'], shape['n_head'], shape['n_embd'], shape['block_size'])}), "
            f"in Hugging Face format by hf_nanogpt. The folder was published without a model card, so "
            f"how it was trained is not recorded here."
        ),
        sections=sections,
        model_ref=repo_id,
        loss_plot=loss_plot,
    )


__all__ = [
    "CHAT_HEADING",
    "CHAT_TAGS",
    "LOSS_PLOT",
    "WPE_PLOT",
    "base_model_id",
    "card_for_repo",
    "chat_text",
    "field_table",
    "model_shape",
    "has_metadata",
    "loss_plot_section",
    "render_model_card",
    "table",
    "usage_section",
    "wpe_plot_section",
]
