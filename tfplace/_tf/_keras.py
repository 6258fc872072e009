"""Keras calls: the session, the global dtype policy."""

from __future__ import annotations

from tfplace._tf._core import load_keras

__all__ = [
    "clear_keras_session",
    "keras_policy",
    "set_keras_policy",
]


def clear_keras_session() -> None:
    """``keras.backend.clear_session()`` of the Keras flavour in use (frees models, graphs)."""
    load_keras(stacklevel=3).backend.clear_session()


def keras_policy() -> str:
    """The name of Keras's global dtype policy (``"float32"``, ``"mixed_float16"``, ...)."""
    return str(load_keras(stacklevel=3).mixed_precision.global_policy().name)


def set_keras_policy(name: str) -> None:
    """``keras.mixed_precision.set_global_policy(name)``."""
    load_keras(stacklevel=3).mixed_precision.set_global_policy(name)
