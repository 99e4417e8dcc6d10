"""Errors the core raises for bad input; each message tells the user what to fix. And the
one rule for telling an accelerator's failure from the model's: `device_error`."""


class AuditInputError(ValueError):
    """The model, the data or the settings cannot be audited as given."""


class ModelRejected(AuditInputError):
    """The ONNX file is unsafe, malformed, or not a classifier."""


class DatasetRejected(AuditInputError):
    """The dataset file is unsafe, malformed, or does not fit the model."""


# How torch and onnxruntime report an accelerator that failed (out of memory; a driver, ECC
# or launch error; a device that is not there): torch.cuda.OutOfMemoryError,
# torch.AcceleratorError, or an error whose text names the CUDA stack.
_DEVICE_ERROR_TYPES = frozenset({"OutOfMemoryError", "AcceleratorError"})
_DEVICE_WORDS = ("CUDA", "cuDNN", "CUBLAS", "cuBLAS", "NVIDIA")


def device_error(kind: str, message: str) -> bool:
    """Whether an exception, by its class name and text, came from the accelerator rather
    than from the model or the data: the host's to retry, never a reason to reject a model.
    By name, so that it also reads an exception reported from a sandbox child. A model that
    puts these words in an error only gets the bounded retries of a failed worker."""
    return kind in _DEVICE_ERROR_TYPES or any(word in message for word in _DEVICE_WORDS)
