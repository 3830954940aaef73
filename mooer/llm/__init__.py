"""The Qwen2 LLM side: prompt templates, LoRA merging, audio splicing and decoding."""
