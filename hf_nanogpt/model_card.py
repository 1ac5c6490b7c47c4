"""Model cards (README.md with YAML metadata) for every model folder this package writes."""

from huggingface_hub import ModelCard, ModelCardData


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


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` (dicts) in the order of `columns`."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows)


def render_model_card(
    title: str,
    summary: str,
    sections: dict[str, str],
    model_ref: str,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    prompt: str = "ROMEO:",
) -> str:
    """README.md text: YAML metadata the Hub reads, the title, a summary, `sections` (heading -> body),
    usage, and limitations."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["nanogpt", "hf_nanogpt", *(tags or [])],
        base_model=base_model,
        datasets=datasets or None,
    )
    body = "\n\n".join(f"## {heading}\n\n{text.strip()}" for heading, text in sections.items())
    limitations = (
        "## Limitations\n\nA small GPT trained for a narrow purpose: expect fluent-looking but unreliable "
        "text, and the biases of its training data. Its context is `block_size` tokens; longer inputs raise "
        "an error."
    )
    content = f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{summary.strip()}\n\n{body}\n\n{usage_section(model_ref, prompt)}\n{limitations}\n"
    return str(ModelCard(content))


__all__ = ["render_model_card", "table", "usage_section"]
