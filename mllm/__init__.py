"""mllm: build multimodal LLMs the LLaVA way, from OpenVision 2 encoder pretraining to a chat demo."""

__version__ = "0.1.0"
