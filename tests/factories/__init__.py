"""Builders per domain: ONNX models, datasets, API tenants."""
