"""The doctor's error explainer: a TensorFlow error text -> the finding that names its fix.

TensorFlow's error texts are matched here and nowhere else in the doctor; ``--verify`` uses
this to explain a device that fails.

Example:
    >>> explain_error("ResourceExhaustedError: OOM when allocating tensor").id
    'D2'
    >>> explain_error("all good") is None
    True
"""

from __future__ import annotations

import re

from tfplace.doctor._rules import Finding

__all__ = ["KNOWN_ERRORS", "explain_error"]

#: ``(regular expression, finding id, why, fix)`` for each known TensorFlow error text.
KNOWN_ERRORS: tuple[tuple[str, str, str, str], ...] = (
    (
        r"DNN library initialization failed|Loaded runtime CuDNN library",
        "B5",
        "cuDNN failed to initialize: the cuDNN that was loaded does not match the one this "
        "TensorFlow was built with (TF#60913), or the GPU ran out of memory while starting it.",
        "Install the cuDNN this build expects (pip install --force-reinstall "
        '"tensorflow[and-cuda]"), and remove other cuDNN copies from LD_LIBRARY_PATH.',
    ),
    (
        r"CUDA driver version is insufficient|failed call to cuInit|CUDA_ERROR_NO_DEVICE",
        "B6",
        "The NVIDIA driver is missing, too old for this TensorFlow's CUDA, or sees no device.",
        "Update the NVIDIA driver to one that supports this CUDA version (nvidia-smi shows "
        "the highest CUDA version the driver supports).",
    ),
    (
        r"Cannot dlopen some GPU libraries",
        "B3",
        "TensorFlow could not load the CUDA libraries, so it registered no GPU.",
        'pip install --force-reinstall "tensorflow[and-cuda]"; unset LD_LIBRARY_PATH; run '
        "with TF_CPP_MAX_VLOG_LEVEL=3 to see which library.",
    ),
    (
        r"Could not load dynamic library",
        "B4",
        "A CUDA library (named in the message) could not be loaded.",
        "Install the matching CUDA/cuDNN or tensorflow[and-cuda]; check LD_LIBRARY_PATH.",
    ),
    (
        r"OOM when allocating|RESOURCE_EXHAUSTED|CUDA_ERROR_OUT_OF_MEMORY",
        "D2",
        "The device ran out of memory.",
        "Lower the batch size, enable memory growth (configure_gpus(memory_growth=True)) so "
        "processes can share the GPU, and set TF_GPU_ALLOCATOR=cuda_malloc_async before "
        "import to reduce fragmentation.",
    ),
    (
        r"cannot be modified after (being )?initiali[sz]ed",
        "A1",
        "A device or thread setting was changed after TensorFlow's runtime started.",
        "Call tfplace.configure_gpus / configure_cpus first, before any tensor or model.",
    ),
    (
        r"Attempt to convert a value \(PerReplica",
        "F1",
        "Keras 3 model.fit under a plain MultiWorkerMirroredStrategy.",
        "Create the strategy with tfplace.pick_strategy().",
    ),
    (
        r"Collective has timed out|Collective ops is aborted",
        "F5",
        "A multi-worker collective gave up waiting: a peer died or is unreachable.",
        "Check the other workers' logs; every worker in TF_CONFIG must be running.",
    ),
)


def explain_error(error: BaseException | str) -> Finding | None:
    """Map a TensorFlow error (or its text) to a finding with the fix, if it is a known one.

    Args:
        error: the exception TensorFlow raised, or the text of an error or log line.

    Returns:
        A finding of severity ``"error"`` whose ``what`` is the error's first line, or None
        when the text matches no known cause.

    Example:
        >>> explain_error("Failed call to cuInit: CUDA_ERROR_NO_DEVICE").id
        'B6'
    """
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    for pattern, fid, why, fix in KNOWN_ERRORS:
        if re.search(pattern, text, flags=re.IGNORECASE):
            first = text.strip().splitlines()[0][:300] if text.strip() else text
            return Finding(fid, "error", first, why, fix)
    return None
