"""Talking to a trained VLM: terminal chat, the web demo and an HTTP API (arrive with `mllm chat` and `mllm serve`)."""
