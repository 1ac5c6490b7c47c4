"""Conversions between hf_nanogpt model folders and other formats (installed as hf_nanogpt.conversion).

- `nanogpt`: nanoGPT's ckpt.pt <-> hf_nanogpt (`hf-nanogpt convert nanogpt`, `hf-nanogpt export nanogpt`).
- `gpt2`: transformers' GPT2LMHeadModel <-> hf_nanogpt (`hf-nanogpt convert gpt2`, `hf-nanogpt export gpt2`).
- `llmc`: llm.c model files (gpt2_124M.bin) <-> hf_nanogpt (`hf-nanogpt convert llmc`, `hf-nanogpt export llmc`).
- `gguf`: hf_nanogpt -> a GGUF file for llama.cpp (`hf-nanogpt export gguf`).
- `common`: the error type, the output rules (folders and single files), the logits check and the tanh-GELU
  switch they share.
"""
