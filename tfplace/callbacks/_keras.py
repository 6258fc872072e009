"""What the callbacks need from Keras and from the strategy: the base class, who writes,
which workers there are, and where they meet."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from tfplace import _tf
from tfplace.cluster._stock import watch as watch_stock_callbacks

if TYPE_CHECKING:
    from tfplace._facts.cluster.spec import ClusterSpec

__all__ = [
    "KerasFlavoured",
    "chief_task",
    "is_legacy",
    "is_writer",
    "meet",
    "multi_worker",
    "strategy_cluster",
    "task",
    "tasks",
]

_BARRIER = "tfplace.callbacks"
_classes: dict[tuple[type, str], type] = {}
_classes_lock = threading.Lock()


class KerasFlavoured:
    """Instances are of a subclass that also derives from the right Keras base class."""

    _keras_base = "Callback"
    _tfplace_keras = "keras"
    #: Read by the check for Keras's own multi-worker-unsafe callbacks: this one is safe.
    _tfplace_safe = True
    if TYPE_CHECKING:  # provided by the Keras base class at run time
        model: Any

    @classmethod
    def _check_base(cls, base: type) -> None:
        """Refuse a Keras base class that lacks what this class relies on (nothing here)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        keras = _tf.load_keras(stacklevel=3)
        key = (cls, keras.__name__)
        with _classes_lock:
            concrete = _classes.get(key)
            if concrete is None:
                base = getattr(keras.callbacks, cls._keras_base)
                cls._check_base(base)
                concrete = type(cls.__name__, (cls, base), {"__module__": "tfplace.callbacks"})
                concrete.__qualname__ = cls.__qualname__
                _classes[key] = concrete
        instance: Any = object.__new__(concrete)
        instance._tfplace_keras = keras.__name__
        return instance

    def set_model(self, model: Any) -> None:
        """Keras's ``set_model`` (before any callback's ``on_train_begin``); a multi-worker
        strategy the user built is then watched for Keras's stock callbacks as well."""
        super().set_model(model)  # type: ignore[misc]
        watch_stock_callbacks(_strategy(model))


def _strategy(model: Any) -> Any:
    return getattr(model, "distribute_strategy", None)


def is_writer(model: Any) -> bool:
    """Whether this worker writes the real files (the chief; any single process)."""
    extended = getattr(_strategy(model), "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


def multi_worker(model: Any) -> bool:
    """Whether the model trains under a multi-worker strategy with more than one worker."""
    strategy = _strategy(model)
    if strategy is None:
        return False
    return _tf.strategy_num_workers(strategy) > 1


def task(model: Any) -> str:
    """This worker's ``"<task type>/<index>"``."""
    resolver = getattr(_strategy(model), "cluster_resolver", None)
    return f"{getattr(resolver, 'task_type', 'worker')}/{getattr(resolver, 'task_id', 0)}"


def tasks(model: Any) -> list[str]:
    """Every training task's ``"<task type>/<index>"``, the chief first."""
    resolver = _strategy(model).cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    return [f"{job}/{i}" for job in ("chief", "worker") for i in range(len(spec.get(job, [])))]


def chief_task(model: Any) -> str:
    """The task that writes: ``chief/0`` when the cluster has a chief, else ``worker/0``."""
    return tasks(model)[0]


def strategy_cluster(model: Any) -> ClusterSpec | None:
    """The cluster tfplace built the model's strategy for (None: not tfplace's strategy)."""
    from tfplace.cluster._multiworker import cluster_of

    return cluster_of(_strategy(model))


def meet(model: Any, timeout: float = 600.0) -> None:
    """A :func:`tfplace.barrier` of the workers of the model's strategy (none alone)."""
    if multi_worker(model):
        from tfplace.cluster._multiworker import barrier

        barrier(timeout=timeout, name=_BARRIER, cluster=strategy_cluster(model))


def is_legacy(keras_module_name: str) -> bool:
    """Whether the Keras module name is tf_keras's."""
    return keras_module_name.startswith("tf_keras")
