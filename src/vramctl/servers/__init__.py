"""Clients for the servers that hold VRAM: llama-swap, Ollama and the face detector service."""

from .facedetect import FaceDetectControl
from .llama_swap import LlamaSwapClient
from .ollama import OllamaClient

__all__ = ["FaceDetectControl", "LlamaSwapClient", "OllamaClient"]
