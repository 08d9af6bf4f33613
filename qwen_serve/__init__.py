"""qwen-serve: Qwen3-ASR speech recognition behind the OpenAI Audio API."""

__version__ = "0.1.0"
