"""Conversions between hf_nanogpt model folders and other formats (installed as hf_nanogpt.conversion).

- `nanogpt`: nanoGPT's ckpt.pt <-> hf_nanogpt (`hf-nanogpt convert nanogpt`, `hf-nanogpt export nanogpt`).
- `gpt2`: transformers' GPT2LMHeadModel <-> hf_nanogpt (`hf-nanogpt convert gpt2`, `hf-nanogpt export gpt2`).
- `common`: the error type, the output-folder rule and the logits check they share.
"""
