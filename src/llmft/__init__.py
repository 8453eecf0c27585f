"""llmft: fine-tune LLaMA-family language models (Hugging Face format), correct by default."""

__version__ = "0.1.0"
