"""lm-evaluation-harness on nanoGPT model folders, without trust_remote_code.

    python -m hf_nanogpt.lm_eval --model hf --model_args pretrained=FOLDER_OR_REPO --tasks hellaswag

takes exactly lm-eval's own arguments and runs lm-eval's own command line, after importing hf_nanogpt,
which registers the nanogpt model type with transformers' Auto classes. lm-eval has no plugin entry
points through which a package could do that for a plain `lm_eval` command, hence this module.
"""

import sys

import hf_nanogpt

INSTALL = 'pip install "hf-nanogpt[eval]"'


def tell_lm_eval_nanogpt_is_causal() -> None:
    """lm-eval's `hf` model picks its backend (causal or seq2seq) from transformers' tables of built-in
    model types, which a registered type is never in, and warns that the type is unknown before falling
    back to causal. Give its module its own copy of the causal table with nanogpt in it (transformers'
    table is left as it is; a release that reads the table differently just warns again)."""
    from lm_eval.models import huggingface

    causal = getattr(huggingface, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", None)
    if causal is None:
        return
    huggingface.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES = {
        **causal,
        hf_nanogpt.NanoGPTConfig.model_type: hf_nanogpt.NanoGPTForCausalLM.__name__,
    }


def main(argv: list[str] | None = None) -> int:
    """Run lm-eval's command line with `argv` (default: this process's arguments)."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:
        print(
            f"error: lm-evaluation-harness could not be imported ({err}). Install it with: {INSTALL}", file=sys.stderr
        )
        return 2
    tell_lm_eval_nanogpt_is_causal()
    saved = sys.argv
    sys.argv = ["python -m hf_nanogpt.lm_eval", *(sys.argv[1:] if argv is None else argv)]  # lm-eval parses sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
