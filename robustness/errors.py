"""Errors the core raises for bad input; each message tells the user what to fix."""


class AuditInputError(ValueError):
    """The model, the data or the settings cannot be audited as given."""


class ModelRejected(AuditInputError):
    """The ONNX file is unsafe, malformed, or not a classifier."""


class DatasetRejected(AuditInputError):
    """The dataset file is unsafe, malformed, or does not fit the model."""
