"""Export a quantized network.

* :mod:`quantlens.export.weights`: ``quant_config.json`` and ``weights.safetensors``
  (what ``fix`` and ``plan`` write; :func:`export` keeps its old import path
  ``from quantlens.export import export``).
* :mod:`quantlens.export.onnx`: a QDQ ONNX model that onnxruntime runs (:func:`export_onnx`).
* :mod:`quantlens.export.compressed_tensors`: a Hugging Face checkpoint that transformers and vLLM
  load with compressed-tensors (:func:`export_compressed_tensors`).
* :mod:`quantlens.export.gguf`: a GGUF file that llama.cpp reads (:func:`export_gguf`).
"""

from quantlens.export.weights import export, weight_tensors

__all__ = ["export", "weight_tensors", "export_onnx", "OnnxExport", "export_compressed_tensors", "CTExport", "export_gguf", "GgufExport"]


def __getattr__(name: str):  # the ONNX side imports torch.onnx lazily
    if name in ("export_onnx", "OnnxExport"):
        from quantlens.export import onnx as _onnx

        return getattr(_onnx, name)
    if name in ("export_compressed_tensors", "CTExport"):
        from quantlens.export import compressed_tensors as _ct

        return getattr(_ct, name)
    if name in ("export_gguf", "GgufExport"):
        from quantlens.export import gguf as _gguf

        return getattr(_gguf, name)
    raise AttributeError(name)
