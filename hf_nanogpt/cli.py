"""The `hf-nanogpt` command.

    hf-nanogpt --help
    hf-nanogpt generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--greedy]
    hf-nanogpt sample MODEL [--start TEXT|FILE:path] [--num_samples 10] [--max_new_tokens 500] ...
    hf-nanogpt chat MODEL [--system TEXT] [--max_new_tokens N] [--temperature T] [--top_k K] [--seed S]
    hf-nanogpt serve MODEL [--host 127.0.0.1] [--port 8000] [--no-continuous-batching] [--trust-remote-code]
    hf-nanogpt convert nanogpt SRC OUT [--meta meta.pkl | --tokenizer gpt2|DIR] [--crop-vocab] [--overwrite]
                               [--push-to-hub REPO_ID [--private]]
    hf-nanogpt export nanogpt MODEL OUT_DIR [--dataset NAME] [--overwrite]
    hf-nanogpt convert gpt2 SRC OUT [--overwrite] [--push-to-hub REPO_ID [--private]]   (SRC: folder or Hub id)
    hf-nanogpt export gpt2 MODEL OUT [--overwrite]
    hf-nanogpt export gguf MODEL OUT.gguf [--outtype f32|f16|bf16|q8_0|q5_0|q4_0] [--overwrite]
                           [--trust-remote-code]
    hf-nanogpt convert llmc IN.bin OUT [--tokenizer gpt2|DIR] [--overwrite] [--push-to-hub REPO_ID [--private]]
    hf-nanogpt export llmc MODEL OUT.bin [--dtype float32|bfloat16] [--overwrite] [--trust-remote-code]
    hf-nanogpt prepare INPUT OUT_DIR --tokenizer char|gpt2|bpe:VOCAB|PATH [--num_proc N] [--shard_tokens N]
                       [--max_memory SIZE] [--messages_column messages]   (conversations: --tokenizer MODEL)
    hf-nanogpt train [CONFIG] [--name value ...]          (also: accelerate launch -m hf_nanogpt.train ...)
    hf-nanogpt push MODEL REPO_ID [--private] [--revision BRANCH] [--commit-message M] [--token T]
    hf-nanogpt inspect MODEL --out DIR [--tokens TEXT ...] [--neighbours K] [--trust-remote-code]

MODEL is a model folder or a Hub repo id. Each subcommand is a function `cmd_<name>(args)` with its
options declared in `add_<group>_command(s)`, which `build_parser` calls; the library functions they call are
documented in the guides under docs/.
"""

import argparse
import os
import sys

import torch


def load_model_and_tokenizer(model_id: str, device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False):
    """A model folder or Hub id -> (model in eval mode on `device`, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    import hf_nanogpt  # noqa: F401  (registers the nanogpt model type with the Auto classes)

    logging.disable_progress_bar()  # keep the terminal for the generated text

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device {device}: no CUDA device is available (torch {torch.__version__}, {build}); use --device cpu."
        )
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (ValueError, OSError):
        raise
    except Exception as err:  # a truncated safetensors file, weights whose shapes disagree with config.json
        raise ValueError(
            f"{model_id}: the model could not be loaded ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Are model.safetensors and config.json complete and from the same model? Write the folder again."
        ) from err
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


def load_for_decoding(args: argparse.Namespace):
    """MODEL as the decoding commands (generate, sample, chat) load it: `load_model_and_tokenizer` from their
    loading options, with decoding's fastest CPU products attached (F.linear elsewhere)."""
    from .cpu_decode import attach_cpu_decode

    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype, args.trust_remote_code)
    attach_cpu_decode(model)
    return model, tokenizer


def cmd_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from .tokenization import encode_text

    model, tokenizer = load_for_decoding(args)
    input_ids = torch.tensor([encode_text(tokenizer, args.prompt, "--prompt")], dtype=torch.long, device=args.device)
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt encodes to no tokens; pass a non-empty --prompt.")
    block_size, prompt_length = model.config.max_position_embeddings, input_ids.shape[1]
    if prompt_length >= block_size:
        raise ValueError(
            f"the prompt is {prompt_length} tokens, {prompt_length - block_size + 1} more than the {block_size - 1} "
            f"that leave room for a new token in the model's block_size {block_size}: shorten it, or cut it from "
            f"the left (keep its last {block_size - 1} tokens), as nanoGPT's sample.py crops its context."
        )
    room = block_size - prompt_length
    max_new = (
        args.max_new_tokens
        if args.max_new_tokens is not None
        else min(model.generation_config.max_new_tokens or room, room)
    )
    if max_new > room:
        raise ValueError(
            f"prompt ({prompt_length} tokens) plus --max-new-tokens ({max_new}) exceeds the model's "
            f"block_size {block_size}; lower --max-new-tokens to at most {room}."
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
            # a total length, as the folder's generation_config.json sets one (max_new_tokens beside it would warn)
            max_length=prompt_length + max_new,
            max_new_tokens=None,
            streamer=streamer,
            **sampling,
        )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample

    model, tokenizer = load_for_decoding(args)
    sample(
        model,
        tokenizer,
        start=args.start,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k if args.top_k > 0 else None,
        seed=args.seed,
        use_cache=args.kv_cache,
        write=lambda text: print(text, flush=True),
    )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat_cli import chat, require_chat_template

    model, tokenizer = load_for_decoding(args)
    require_chat_template(tokenizer, args.model)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    try:
        return chat(
            model,
            tokenizer,
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
        )
    except KeyboardInterrupt:  # outside a reply or the prompt (which chat handles): leave quietly
        print(file=sys.stderr)
        return 0


SERVING_PACKAGES = ("fastapi", "starlette", "uvicorn", "openai", "pydantic")  # hf-nanogpt[serve]


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serving import serve
    except ImportError as err:
        if err.name not in SERVING_PACKAGES:
            raise
        print(f"error: hf-nanogpt serve needs {err.name}: pip install 'hf-nanogpt[serve]'", file=sys.stderr)
        return 2

    code = serve(
        args.model,
        host=args.host,
        port=args.port,
        continuous_batching=args.continuous_batching,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        log_level=args.log_level,
    )
    # Stopped (Ctrl-C): every request in flight was answered and the batching worker stopped, but transformers'
    # one-at-a-time generate() runs on a daemon thread it cannot interrupt, and a daemon thread inside torch when
    # the interpreter shuts down aborts the process. Nothing is left to clean up: leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_convert_nanogpt(args: argparse.Namespace) -> int:
    from .conversion.nanogpt import convert_nanogpt

    convert_nanogpt(
        args.src,
        args.out,
        tokenizer=args.tokenizer,
        meta=args.meta,
        crop_vocab=args.crop_vocab,
        overwrite=args.overwrite,
    )
    push_if_requested(args, args.out)
    return 0


def cmd_export_nanogpt(args: argparse.Namespace) -> int:
    from .conversion.nanogpt import export_nanogpt

    export_nanogpt(
        args.model,
        args.out_dir,
        dataset=args.dataset,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    return 0


def cmd_convert_gpt2(args: argparse.Namespace) -> int:
    from .conversion.gpt2 import convert_gpt2

    convert_gpt2(args.src, args.out, overwrite=args.overwrite)
    push_if_requested(args, args.out)
    return 0


def cmd_export_gpt2(args: argparse.Namespace) -> int:
    from .conversion.gpt2 import export_gpt2

    export_gpt2(args.model, args.out, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from .conversion.gguf import export_gguf

    export_gguf(
        args.model, args.out, outtype=args.outtype, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code
    )
    return 0


def cmd_convert_llmc(args: argparse.Namespace) -> int:
    from .conversion.llmc import convert_llmc

    convert_llmc(args.src, args.out, tokenizer=args.tokenizer, overwrite=args.overwrite)
    push_if_requested(args, args.out)
    return 0


def cmd_export_llmc(args: argparse.Namespace) -> int:
    from .conversion.llmc import export_llmc

    export_llmc(
        args.model, args.out, dtype=args.dtype, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.writing import prepare

    prepare(
        args.input,
        args.out_dir,
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        text_column=args.text_column,
        overwrite=args.overwrite,
        dataset_config=args.dataset_config,
        num_proc=args.num_proc,
        max_memory=args.max_memory,
        shard_tokens=args.shard_tokens,
        messages_column=args.messages_column,
    )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    push_to_hub(
        args.model,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.token,
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_embeddings import report, token_ids, write_pictures

    if args.neighbours < 1:
        raise ValueError(f"--neighbours must be at least 1, got {args.neighbours}.")
    model, tokenizer = load_model_and_tokenizer(args.model, "cpu", "float32", args.trust_remote_code)
    ids = token_ids(tokenizer, args.tokens) if args.tokens else None
    print(report(model, tokenizer, ids, k=args.neighbours))
    for path in write_pictures(model.transformer.wpe.weight, args.out):
        print(f"wrote {path}")
    return 0


# -- the parser: one function per command group; an option two commands share is declared once, below


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder or Hub repo id")


def add_overwrite_option(parser: argparse.ArgumentParser, out: str | None = None) -> None:
    """--overwrite for commands that write OUT (named in the help when given)."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace {out} if it exists" if out else None)


def add_trust_remote_code_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true", help=help)


def add_push_to_hub_options(parser: argparse.ArgumentParser) -> None:
    """--push-to-hub for commands that write a model folder (conversions, training)."""
    parser.add_argument(
        "--push-to-hub",
        "--push_to_hub",
        metavar="REPO_ID",
        default=None,
        help="publish the written folder as this Hub repo (token: HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def push_if_requested(args: argparse.Namespace, folder) -> None:
    """After a verified write: publish `folder` when --push-to-hub was given."""
    if args.push_to_hub:
        from .hub import push_to_hub

        push_to_hub(folder, args.push_to_hub, private=args.private)


def add_model_loading_options(parser: argparse.ArgumentParser, dtype_default: str = "auto") -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=dtype_default, choices=["auto", "float32", "bfloat16", "float16"])
    add_trust_remote_code_option(parser, help="load a model through its own code files")


def add_text_commands(sub) -> None:
    """generate, sample and chat."""
    gen = sub.add_parser(
        "generate",
        help="stream text from a model folder or Hub repo id",
        description="Generate text from MODEL (a model folder or a Hub repo id), streaming tokens as they come. "
        "Sampling settings default to the model's generation_config.json.",
    )
    add_model_argument(gen)
    gen.add_argument("--prompt", default="\n", help="text to continue (default: a newline, as nanoGPT's sample.py)")
    gen.add_argument("--max-new-tokens", type=int, default=None, help="default: up to the model's block_size")
    gen.add_argument("--greedy", action="store_true", help="pick the most likely token at each step")
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    add_model_loading_options(gen)
    gen.set_defaults(func=cmd_generate)

    smp = sub.add_parser(
        "sample",
        help="nanoGPT's sample.py on any model folder or Hub id (same options, same output)",
        description="Sample as nanoGPT's sample.py does, with its option names and defaults: with the same seed "
        "and weights it prints the same samples. Works past block_size by sliding the context window.",
    )
    add_model_argument(smp)
    smp.add_argument("--start", default="\n", help='prompt text, or FILE:path to read it from a file (default "\\n")')
    smp.add_argument("--num_samples", "--num-samples", type=int, default=10)
    smp.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=500)
    smp.add_argument("--temperature", type=float, default=0.8, help="> 0; below 1 is less random")
    smp.add_argument("--top_k", "--top-k", type=int, default=200, help="keep the k most likely tokens (0: all)")
    smp.add_argument("--seed", type=int, default=1337)
    smp.add_argument(
        "--kv_cache",
        "--kv-cache",
        action="store_true",
        help="reuse attention keys/values inside the window: faster, but float rounding can change "
        "rare draws, so samples may differ from nanoGPT's",
    )
    add_model_loading_options(smp, dtype_default="float32")
    smp.set_defaults(func=cmd_sample)

    cht = sub.add_parser(
        "chat",
        help="talk to a chat model (one fine-tuned on conversations), replies streamed",
        description="A conversation with MODEL through its tokenizer's chat template (see docs/chat.md), replies "
        "streamed as they come. At a terminal: type after 'you> '; /reset clears the history, /exit or /quit "
        "(or Ctrl-D) leave, Ctrl-C stops a reply and a second Ctrl-C leaves. From a pipe: each line is a user "
        "turn, each reply is printed. When the conversation and --max_new_tokens would pass the model's "
        "block_size, the oldest turns are left out (said on stderr); --system stays. Sampling settings default "
        "to the model's generation_config.json.",
    )
    add_model_argument(cht)
    cht.add_argument("--system", default=None, metavar="TEXT", help="a system message to open the conversation")
    cht.add_argument(
        "--max_new_tokens",
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="the longest reply, in tokens (default: 256, or half of block_size if less)",
    )
    cht.add_argument(
        "--temperature", type=float, default=None, metavar="T", help="> 0; 0 picks the most likely token (greedy)"
    )
    cht.add_argument(
        "--top_k", "--top-k", type=int, default=None, metavar="K", help="keep the k most likely tokens (0: all)"
    )
    cht.add_argument("--seed", type=int, default=None, metavar="S")
    add_model_loading_options(cht)
    cht.set_defaults(func=cmd_chat)


def add_serve_command(sub) -> None:
    srv = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server for a model folder or Hub id (docs/serving.md)",
        description="Serve MODEL over HTTP with OpenAI's API: GET /health, GET /v1/models, POST /v1/completions and, "
        "for a model whose tokenizer has a chat template, POST /v1/chat/completions, streamed (SSE) or not. "
        "transformers' serving code answers, with continuous batching unless --no-continuous-batching; a request's "
        "`model` is MODEL as written here. Requests that do not fit (a prompt past block_size, a max_tokens past "
        "the room left, a malformed body) get a 4xx saying why. Ctrl-C stops it. Needs pip install "
        "'hf-nanogpt[serve]'.",
    )
    add_model_argument(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument(
        "--no-continuous-batching",
        dest="continuous_batching",
        action="store_false",
        help="run one generate() at a time instead of batching the requests in flight together",
    )
    srv.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="continuous batching: the most requests generated together (more wait); the KV cache holds this many "
        "requests of block_size tokens (default 32)",
    )
    srv.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get a 413 (default 1 MiB)"
    )
    srv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_model_loading_options(srv)
    srv.set_defaults(func=cmd_serve)


def add_convert_commands(sub) -> None:
    """convert nanogpt | gpt2 | llmc: other formats into model folders (each can push what it wrote)."""
    convert = sub.add_parser("convert", help="convert other formats into hf_nanogpt model folders")
    convert_sub = convert.add_subparsers(dest="source", metavar="FORMAT", required=True)
    cn = convert_sub.add_parser(
        "nanogpt",
        help="a nanoGPT ckpt.pt or out_dir -> a Hugging Face model folder",
        description="Convert a nanoGPT checkpoint into a model folder (safetensors, config, tokenizer, generation "
        "config, remote code, model card). Tokenizer: --meta, else --tokenizer, else a meta.pkl beside the "
        "checkpoint or in data/<dataset>/ (as sample.py looks), else GPT-2 BPE. The written folder is reloaded "
        "and its logits checked against the checkpoint before it replaces OUT.",
    )
    cn.add_argument("src", metavar="SRC", help="ckpt.pt, or an out_dir holding one")
    cn.add_argument("out", metavar="OUT", help="model folder to write")
    cn.add_argument("--meta", default=None, help="char-level meta.pkl")
    cn.add_argument("--tokenizer", default=None, help="'gpt2', or a folder with a saved tokenizer or GPT-2 BPE files")
    cn.add_argument(
        "--crop-vocab", "--crop_vocab", action="store_true", help="cut the padded embedding to the tokenizer's size"
    )
    add_overwrite_option(cn, "OUT")
    add_push_to_hub_options(cn)
    cn.set_defaults(func=cmd_convert_nanogpt)

    cg = convert_sub.add_parser(
        "gpt2",
        help="OpenAI GPT-2 (a GPT2LMHeadModel folder or Hub id) -> a hf_nanogpt model folder",
        description="Convert GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or any GPT2LMHeadModel folder) "
        "into nanoGPT's architecture: Conv1D weights transposed, activation gelu_new, tokenizer and generation "
        "settings carried. Checked against GPT2LMHeadModel (logits within 1e-5) before OUT is replaced.",
    )
    cg.add_argument("src", metavar="SRC", help="GPT2LMHeadModel folder, or a Hub id (needs network)")
    cg.add_argument("out", metavar="OUT")
    add_overwrite_option(cg)
    add_push_to_hub_options(cg)
    cg.set_defaults(func=cmd_convert_gpt2)

    cl = convert_sub.add_parser(
        "llmc",
        help="an llm.c model file (gpt2_124M.bin, model_*.bin) -> a hf_nanogpt model folder",
        description="Convert an llm.c model file (version 3 float32 or 5 bfloat16, read as float32) into a model "
        "folder: bias on, activation gelu_new (llm.c's tanh GELU), all Vp padded rows kept and ids >= V never "
        "generated. Tokenizer: --tokenizer, else GPT-2 BPE when V is 50257. Checked against llm.c's forward of the "
        "file (logits within 1e-5) before OUT is replaced.",
    )
    cl.add_argument("src", metavar="IN.bin", help="llm.c model file")
    cl.add_argument("out", metavar="OUT", help="model folder to write")
    cl.add_argument(
        "--tokenizer", default=None, help="'gpt2', a meta.pkl, or a folder with a saved tokenizer or GPT-2 BPE files"
    )
    add_overwrite_option(cl, "OUT")
    add_push_to_hub_options(cl)
    cl.set_defaults(func=cmd_convert_llmc)


def add_prepare_command(sub) -> None:
    prep = sub.add_parser(
        "prepare",
        help="tokenize text into nanoGPT's data layout (train.bin, val.bin, meta.pkl) or llm.c's shards",
        description="Write OUT_DIR/train.bin and val.bin (uint16 ids, uint32 past 65,536 tokens) and, for char "
        "level, meta.pkl, as nanoGPT's prepare.py scripts do: the first 90% of a text trains, the rest validates "
        "(of several documents, the first 90%; of a stream, every 10th document validates). With --shard_tokens, "
        "llm.c's and modded-nanogpt's shards instead. Streams: memory does not grow with the corpus. "
        "--tokenizer bpe:VOCAB trains a byte-level BPE of GPT-2's kind on the train split first and saves it in "
        "OUT_DIR/tokenizer, which the trainer puts into its model folder. Prints the val split's tokens per byte, "
        "beside what GPT-2's BPE and a char vocabulary would spend.",
    )
    prep.add_argument(
        "input",
        metavar="INPUT",
        help="a text file, a folder of text files, or a `datasets` data set: a "
        "saved folder, .json/.jsonl/.parquet/.csv files (or a folder of them), or a Hub name (streamed); of texts, "
        "or of conversations (a messages column)",
    )
    prep.add_argument("out_dir", metavar="OUT_DIR")
    prep.add_argument(
        "--tokenizer",
        default="char",
        help="char | gpt2 | bpe:VOCAB (a byte-level BPE of VOCAB tokens, e.g. bpe:8192, trained on the train split) "
        "| a tokenizer folder or meta.pkl (default: char); for conversations, the MODEL to fine-tune: gpt2, a model "
        "or tokenizer folder",
    )
    prep.add_argument("--val_fraction", "--val-fraction", type=float, default=0.1)
    prep.add_argument("--text_column", "--text-column", default="text", help="column of a `datasets` data set")
    prep.add_argument(
        "--messages_column",
        "--messages-column",
        default="messages",
        help="a data set with this column (lists of {role, content}) and no text column is a conversation set: "
        "encoded by the chat template of --tokenizer MODEL, with a loss mask (docs/chat.md; default: messages)",
    )
    prep.add_argument(
        "--dataset_config",
        "--dataset-config",
        default=None,
        help="a Hub data set's configuration (e.g. sample-10BT of HuggingFaceFW/fineweb)",
    )
    prep.add_argument(
        "--num_proc", "--num-proc", type=int, default=None, help="worker processes (default: the CPU count)"
    )
    prep.add_argument(
        "--max_memory",
        "--max-memory",
        default="1GB",
        help="bound on the text and ids in flight, e.g. 512MB (default 1GB; the interpreter's own not counted)",
    )
    prep.add_argument(
        "--shard_tokens",
        "--shard-tokens",
        default=None,
        help=(
            "write shards of this many tokens (e.g. 100M, llm.c's size) in llm.c's format instead of train.bin/val.bin"
        ),
    )
    add_overwrite_option(prep)
    prep.set_defaults(func=cmd_prepare)


def add_train_command(sub) -> None:
    """Listed here for --help; its options are TrainConfig's, parsed by hf_nanogpt.train (see main)."""
    trn = sub.add_parser(
        "train",
        add_help=False,
        help="nanoGPT's train.py on Accelerate: `hf-nanogpt train [CONFIG] [--name value ...]` (--help for options)",
    )
    trn.add_argument("args", nargs=argparse.REMAINDER)  # handed to hf_nanogpt.train as they are


def add_export_commands(sub) -> None:
    """export nanogpt | gpt2 | gguf | llmc: model folders (or Hub ids, through their own code if asked) to other
    formats."""
    export = sub.add_parser("export", help="export hf_nanogpt model folders to other formats")
    export_sub = export.add_subparsers(dest="target", metavar="FORMAT", required=True)
    en = export_sub.add_parser(
        "nanogpt",
        help="a model folder or Hub id -> OUT_DIR/ckpt.pt for nanoGPT's sample.py and train.py",
        description="Write OUT_DIR/ckpt.pt in nanoGPT's format (model, model_args, iter_num, best_val_loss, config, "
        "and an optimizer entry train.py accepts with init_from='resume'), plus meta.pkl for char-level tokenizers. "
        "Any tokenizer but GPT-2's BPE and char level (a trained BPE) is saved in OUT_DIR/tokenizer/, with a warning: "
        "nanoGPT's sample.py would decode its ids as GPT-2's.",
    )
    add_model_argument(en)
    en.add_argument("out_dir", metavar="OUT_DIR")
    en.add_argument("--dataset", default=None, help="config['dataset'] (where sample.py looks for meta.pkl)")
    add_overwrite_option(en)
    add_trust_remote_code_option(en)
    en.set_defaults(func=cmd_export_nanogpt)
    eg = export_sub.add_parser(
        "gpt2",
        help="a model folder or Hub id -> a GPT2LMHeadModel folder stock transformers loads (no custom code)",
        description="Write a GPT2LMHeadModel folder (model_type gpt2, Conv1D layout, zero biases for bias=False, "
        "padded vocabulary kept) for serving stacks that know GPT-2. Checked against the source (logits within 1e-5).",
    )
    eg.add_argument("model", metavar="MODEL")
    eg.add_argument("out", metavar="OUT")
    add_overwrite_option(eg)
    add_trust_remote_code_option(eg)
    eg.set_defaults(func=cmd_export_gpt2)
    eq = export_sub.add_parser(
        "gguf",
        help="a model folder or Hub id -> a GGUF file for llama.cpp (architecture gpt2, tokenizer inside)",
        description="Write one GGUF file that llama.cpp runs as GPT-2: tensors in llama.cpp's names, zero biases for "
        "bias=False, the padded vocabulary as [PAD] tokens, the tokenizer embedded (GPT-2 BPE, or char level as "
        "llama.cpp's rwkv vocabulary). llama.cpp computes the tanh GELU: an exact-GELU model is exported with a "
        'warning giving the measured logit change. Needs the gguf package (pip install "hf-nanogpt[gguf]").',
    )
    add_model_argument(eq)
    eq.add_argument("out", metavar="OUT.gguf", help="GGUF file to write")
    eq.add_argument(
        "--outtype",
        default="f32",
        choices=["f32", "f16", "bf16", "q8_0", "q5_0", "q4_0"],  # conversion.gguf.OUTTYPES
        help="type of the 2-D weights: f32 (default), f16, bf16, or quantized q8_0, q5_0, q4_0 (gguf-py's "
        "quantizer; with q5_0/q4_0 the output matrix, token_embd when tied, is q8_0). Norms, biases and "
        "position_embd stay f32",
    )
    add_overwrite_option(eq, "OUT.gguf")
    add_trust_remote_code_option(eq)
    eq.set_defaults(func=cmd_export_gguf)
    el = export_sub.add_parser(
        "llmc",
        help="a model folder or Hub id -> an llm.c model file for train_gpt2.c / train_gpt2.cu",
        description="Write an llm.c model file: version 3 (float32, what train_gpt2.c reads) or 5 (bfloat16, "
        "train_gpt2.cu's default), V = the tokenizer's size, wte padded with zero rows to a multiple of 128, zero "
        "biases for bias=False. llm.c computes the tanh GELU: an exact-GELU model is exported with a warning giving "
        "the measured logit change. The file is read back and checked with llm.c's forward (logits within 1e-5). "
        "The tokenizer goes beside it as OUT_tokenizer.bin in llm.c's tokenizer format (copy it to gpt2_tokenizer.bin "
        "where llm.c runs); a tokenizer without <|endoftext|> (char level) gets none, with a note.",
    )
    add_model_argument(el)
    el.add_argument("out", metavar="OUT.bin", help="llm.c model file to write (train_gpt2.c reads gpt2_124M.bin)")
    el.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="float32: version 3; bfloat16: version 5"
    )
    add_overwrite_option(el, "OUT.bin (and OUT_tokenizer.bin)")
    add_trust_remote_code_option(el)
    el.set_defaults(func=cmd_export_llmc)


def add_push_command(sub) -> None:
    push = sub.add_parser(
        "push",
        help="publish a model folder on the Hugging Face Hub",
        description="Upload MODEL (a folder written by hf_nanogpt) as the Hub repo REPO_ID in one commit: weights, "
        "config with auto_map, remote code, generation config, tokenizer, any loss.png and wpe.png, and a model card "
        "pointed at REPO_ID. The token (HF_TOKEN, `hf auth login`, or --token) is checked before anything is created; "
        "pushing an unchanged folder makes no commit.",
    )
    push.add_argument("model", metavar="MODEL", help="model folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="user/name or org/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument(
        "--revision", metavar="BRANCH", default=None, help="push to this branch (created from main if needed)"
    )
    push.add_argument("--commit-message", "--commit_message", default=None)
    push.add_argument(
        "--token", default=None, help="a write token (default: HF_TOKEN or the token `hf auth login` saved)"
    )
    push.set_defaults(func=cmd_push)


def add_inspect_command(sub) -> None:
    ins = sub.add_parser(
        "inspect",
        help="pictures of the position embedding wpe, and nearest neighbours in the token embedding wte",
        description="Write DIR/wpe.png (cosine similarity between every pair of positions in wpe), "
        "wpe_components.png (its first principal components against position) and wpe_norms.png (each position's "
        "norm), and print the nearest neighbours in wte, by cosine similarity, of a few tokens: --tokens, or the "
        "lowest ids that decode to a word (GPT-2 BPE: ' the', ' an', ' to', ...; char level: the lowest letters). "
        "wte's vocabulary padding (ids past the tokenizer's size) is named and left out. See docs/embeddings.md.",
    )
    add_model_argument(ins)
    ins.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created if needed)")
    ins.add_argument(
        "--tokens", nargs="+", metavar="TEXT", default=None, help="texts of single tokens, e.g. ' the' ' and'"
    )
    ins.add_argument("--neighbours", type=int, default=8, metavar="K", help="neighbours shown per token (default 8)")
    add_trust_remote_code_option(ins, help="load a model through its own code files")
    ins.set_defaults(func=cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-nanogpt",
        description="nanoGPT models in the Hugging Face ecosystem: generate and sample text, convert nanoGPT "
        "checkpoints to Hugging Face model folders and back, publish them on the Hub.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_text_commands(sub)  # generate, sample, chat
    add_serve_command(sub)
    add_convert_commands(sub)
    add_prepare_command(sub)
    add_train_command(sub)
    add_export_commands(sub)
    add_push_command(sub)
    add_inspect_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv[:1] == ["train"]:  # its options are the TrainConfig fields, parsed by hf_nanogpt.train
            from .train import main as train_main

            return train_main(argv[1:])
        args = parser.parse_args(argv)
        return args.func(args)
    except (ValueError, OSError) as err:
        # bad input (and transformers' OSError for a folder or repo that holds no model): say what is
        # wrong, without a traceback
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
