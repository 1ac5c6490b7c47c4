"""The `hf-nanogpt` command.

    hf-nanogpt --help
    hf-nanogpt generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--greedy]

MODEL is a model folder or a Hub repo id. Each subcommand is a function `cmd_<name>(args)` with its
options declared in `build_parser`; later subcommands (convert, export, sample, train, prepare, push)
join the same table.
"""

import argparse
import sys

import torch


def load_model_and_tokenizer(model_id: str, device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False):
    """A model folder or Hub id -> (model in eval mode on `device`, tokenizer)."""
    import hf_nanogpt  # noqa: F401  (registers the nanogpt model type with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


def cmd_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer
    from transformers.utils import logging

    logging.disable_progress_bar()  # keep the terminal for the streamed text

    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype, args.trust_remote_code)
    input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(args.device)
    if input_ids.shape[1] == 0:
        raise SystemExit("error: the prompt encodes to no tokens; pass a non-empty --prompt.")
    block_size = model.config.max_position_embeddings
    max_new = args.max_new_tokens if args.max_new_tokens is not None else model.generation_config.max_new_tokens
    max_new = max_new if max_new is not None else block_size - input_ids.shape[1]
    if input_ids.shape[1] + max_new > block_size:
        raise SystemExit(
            f"error: prompt ({input_ids.shape[1]} tokens) plus --max-new-tokens ({max_new}) exceeds the model's "
            f"block_size {block_size}; lower --max-new-tokens to at most {max(0, block_size - input_ids.shape[1])}."
        )
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sampling = {"do_sample": False} if args.greedy else {"do_sample": True}
    for name in ("temperature", "top_k", "top_p"):
        if getattr(args, name) is not None and not args.greedy:
            sampling[name] = getattr(args, name)
    streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    with torch.inference_mode():
        model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            streamer=streamer,
            **sampling,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-nanogpt",
        description="nanoGPT models in the Hugging Face ecosystem: generate text (more subcommands to come).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate",
        help="stream text from a model folder or Hub repo id",
        description="Generate text from MODEL (a model folder or a Hub repo id), streaming tokens as they come. "
        "Sampling settings default to the model's generation_config.json.",
    )
    gen.add_argument("model", metavar="MODEL", help="model folder or Hub repo id")
    gen.add_argument("--prompt", default="\n", help="text to continue (default: a newline, as nanoGPT's sample.py)")
    gen.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's generation_config")
    gen.add_argument("--greedy", action="store_true", help="pick the most likely token at each step")
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    gen.add_argument("--trust-remote-code", action="store_true", help="load a model through its own code files")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
