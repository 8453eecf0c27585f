"""llmft: fine-tune LLaMA-family language models (Hugging Face format), correct by default."""

import logging as _logging

__version__ = "0.1.0"

# torchao and bitsandbytes (the quantized bases) log at import, which transformers and peft trigger
# whenever they are installed: optional CUDA/Triton kernels this machine lacks, and torch's notice that
# torchao registers enums the old way. Nothing for users to act on, and it would bury llmft's one-line
# errors; real errors still show.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
