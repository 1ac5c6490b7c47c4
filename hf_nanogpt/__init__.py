"""hf_nanogpt: Karpathy's nanoGPT as a first-class Hugging Face transformers model.

Importing the package registers the model with the Auto classes, so that
`AutoModelForCausalLM.from_pretrained(folder_or_repo)` (and the sequence classification, token classification
and question answering Auto classes) works without `trust_remote_code`, and marks the classes for remote code,
so that `save_pretrained` writes the .py files and the `auto_map` that let people load the folder without this
package. It also gives PEFT its defaults for the nanogpt model type (see `peft_defaults`).
"""

import importlib.abc
import sys

import transformers
from transformers import AutoConfig

from . import modeling_nanogpt
from .configuration_nanogpt import NanoGPTConfig
from .modeling_nanogpt import (
    NanoGPTForCausalLM,
    NanoGPTForQuestionAnswering,
    NanoGPTForSequenceClassification,
    NanoGPTForTokenClassification,
    NanoGPTModel,
    NanoGPTPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(NanoGPTConfig.model_type, NanoGPTConfig, exist_ok=True)
NanoGPTConfig.register_for_auto_class()
for auto_name, class_name in modeling_nanogpt.AUTO_MAP.items():
    model_class = getattr(modeling_nanogpt, class_name)
    getattr(transformers, auto_name).register(NanoGPTConfig, model_class, exist_ok=True)
    model_class.register_for_auto_class(auto_name)


def peft_defaults(constants) -> None:
    """PEFT picks a tuner's default target modules by model_type (LoRA: `c_attn` for gpt2) and knows no nanogpt.
    Our module names are GPT-2's (c_attn, c_proj, c_fc, ln_1, ...), so nanogpt gets gpt2's defaults, in every
    mapping of `peft.utils.constants` that has them."""
    for name, mapping in vars(constants).items():
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(mapping, dict) and "gpt2" in mapping:
            mapping.setdefault(NanoGPTConfig.model_type, mapping["gpt2"])


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` once the module `name` is imported, if it ever is: PEFT is optional, and importing
    it here would cost every user of this package a second or more."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the finders below find the real spec
        spec = next(filter(None, (finder.find_spec(fullname, path, target) for finder in sys.meta_path
                                  if hasattr(finder, "find_spec"))), None)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_call(module):
                exec_module(module)
                self.callback(module)

            spec.loader.exec_module = exec_then_call
        return spec


if "peft.utils.constants" in sys.modules:
    peft_defaults(sys.modules["peft.utils.constants"])
elif not any(isinstance(finder, AfterImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, AfterImport("peft.utils.constants", peft_defaults))

__all__ = [
    "NanoGPTConfig",
    "NanoGPTForCausalLM",
    "NanoGPTForQuestionAnswering",
    "NanoGPTForSequenceClassification",
    "NanoGPTForTokenClassification",
    "NanoGPTModel",
    "NanoGPTPreTrainedModel",
    "__version__",
]
