"""robaudit's numeric core: ONNX intake, backends, the divergence metric and baselines.

Importing this package loads nothing heavy; torch is imported by the modules that need it,
so the API can use :mod:`robustness.onnx_graph` without pulling torch in.
"""
