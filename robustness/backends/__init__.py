"""Backends expose one small protocol whether they wrap torch or an onnxruntime session."""
