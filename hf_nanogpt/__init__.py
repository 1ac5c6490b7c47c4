"""hf_nanogpt: Karpathy's nanoGPT as a first-class Hugging Face transformers model.

Importing the package registers the model with the Auto classes, so that
`AutoModelForCausalLM.from_pretrained(folder_or_repo)` works without `trust_remote_code`, and marks the
classes for remote code, so that `save_pretrained` writes the .py files and the `auto_map` that let
people load the folder without this package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_nanogpt import NanoGPTConfig
from .modeling_nanogpt import NanoGPTForCausalLM, NanoGPTModel, NanoGPTPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(NanoGPTConfig.model_type, NanoGPTConfig, exist_ok=True)
AutoModel.register(NanoGPTConfig, NanoGPTModel, exist_ok=True)
AutoModelForCausalLM.register(NanoGPTConfig, NanoGPTForCausalLM, exist_ok=True)

NanoGPTConfig.register_for_auto_class()
NanoGPTModel.register_for_auto_class("AutoModel")
NanoGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["NanoGPTConfig", "NanoGPTForCausalLM", "NanoGPTModel", "NanoGPTPreTrainedModel", "__version__"]
