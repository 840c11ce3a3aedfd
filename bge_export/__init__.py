"""bge-export: the compiler from BAAI BGE checkpoints to ONNX Runtime / TensorRT engine bundles.

Importing this package is cheap: torch, onnx and onnxruntime are imported only by the steps that need them.
"""
__version__ = "0.1.0"
