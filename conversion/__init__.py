"""Conversions between hf_nanogpt model folders and other formats (installed as hf_nanogpt.conversion).

- `nanogpt`: nanoGPT's ckpt.pt <-> hf_nanogpt (`hf-nanogpt convert nanogpt`, `hf-nanogpt export nanogpt`).
"""
