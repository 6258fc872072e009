"""The only module that imports TensorFlow.

Everything else calls :func:`load` inside the functions that need TensorFlow, so
``import tfplace`` stays fast and never starts TensorFlow. TensorFlow's error texts are
matched here, once, and turned into tfplace errors.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from tfplace.errors import AlreadyInitializedError, TfplaceWarning

__all__ = [
    "COLLECTIVE_IMPLEMENTATIONS",
    "INSTALL_HINT",
    "MIRRORED_REDUCTIONS",
    "TFConfig",
    "already_initialized",
    "clear_keras_session",
    "collective_mirrored_strategy",
    "communication_options",
    "connect_tpu",
    "coordination_context",
    "cpu_device_count",
    "cross_device_ops",
    "current_strategy",
    "data_autotune",
    "device_check",
    "device_scope_ops",
    "fit_steps",
    "fresh_collective_keys",
    "fresh_keras_names",
    "gfile_exists",
    "gfile_isdir",
    "gfile_listdir",
    "gfile_makedirs",
    "gfile_read_text",
    "gfile_remove",
    "gfile_rename",
    "gfile_rmtree",
    "gfile_write_text",
    "is_already_exists",
    "is_dataset",
    "is_deadline_exceeded",
    "is_multi_worker",
    "is_placement_error",
    "is_resource_exhausted",
    "keras_of",
    "keras_policy",
    "keras_random_seed",
    "layer_kinds",
    "load",
    "load_keras",
    "logical_device_names",
    "memory_stats",
    "mirrored_strategy",
    "multi_worker_base",
    "nest",
    "one_device_strategy",
    "profile_trace",
    "profiler_start",
    "profiler_stop",
    "replica_arrays",
    "reraise_if_initialized",
    "reset_memory_stats",
    "runtime_started",
    "set_keras_policy",
    "shard_options",
    "simple_cluster_resolver",
    "tpu_strategy",
]

INSTALL_HINT = (
    'pip install "tfplace[cpu]" (CPU-only TensorFlow), "tfplace[gpu]" (TensorFlow with CUDA '
    'libraries) or "tfplace[tensorflow]"'
)

_lock = threading.Lock()
_tf: ModuleType | None = None

# Substrings of TensorFlow's RuntimeError texts when a setting is changed after start-up.
_AFTER_START_MARKERS = (
    "cannot be modified after being initialized",
    "cannot be modified after initialization",
    "must be configured at program startup",
    "Collective ops must be configured",
)


#: The one mapping from a plan's reduction name to TensorFlow's object, per strategy family.
#: Its keys are exactly ``tfplace._decide.strategy.REDUCTIONS`` (a test checks); no name falls
#: back to anything else.
MIRRORED_REDUCTIONS: dict[str, str] = {
    "nccl": "NcclAllReduce",
    "hierarchical_copy": "HierarchicalCopyAllReduce",
    "reduce_to_one": "ReductionToOneDevice",
}
COLLECTIVE_IMPLEMENTATIONS: dict[str, str] = {"ring": "RING", "nccl": "NCCL", "auto": "AUTO"}

#: The values of TF_USE_LEGACY_KERAS that make TensorFlow route tf.keras to tf_keras.
_LEGACY_TRUE = ("1", "true", "True")


def load() -> ModuleType:
    """Import TensorFlow once and return the module.

    Raises:
        ImportError: TensorFlow is not installed; the message names the pip command.
    """
    global _tf
    if _tf is not None:
        return _tf
    with _lock:
        if _tf is None:
            try:
                import tensorflow as tf
            except ImportError as err:
                raise ImportError(
                    f"tfplace needs TensorFlow, which is not installed ({err}). "
                    f"Install it with: {INSTALL_HINT}."
                ) from err
            _tf = tf
    return _tf


def load_keras(*, stacklevel: int = 2) -> ModuleType:
    """Return the Keras module ``tf.keras`` stands for: ``tf_keras`` or Keras 3.

    TensorFlow picks ``tf_keras`` when ``TF_USE_LEGACY_KERAS`` is ``1``/``true``/``True``,
    else the ``keras`` package. This function applies the same rule itself, without touching
    ``tf.keras``: when that variable is set but tf_keras is not installed, ``tf.keras`` raises
    ``ImportError: Keras cannot be imported`` and every later use raises ``RecursionError``
    (TensorFlow's lazy loader is left half-initialised). Ray Train sets the variable in every
    worker, and there ``import keras`` still gives Keras 3, the only Keras the process can
    use, so that is what this returns, with a :class:`~tfplace.errors.TfplaceWarning`.

    Args:
        stacklevel: the frame the warning points at (2: the caller; public functions that
            call this pass 3 so that it points at the user's line).

    Raises:
        ImportError: TensorFlow, or the Keras it needs, is not installed; the message names
            the pip command.

    Warns:
        TfplaceWarning: ``TF_USE_LEGACY_KERAS`` asks for tf_keras, which is not installed;
            Keras 3 is used instead.

    Example:
        >>> from tfplace import _tf
        >>> _tf.load_keras().__name__ in ("keras", "tf_keras")
        True
    """
    load()
    # The variable TensorFlow's own KerasLazyLoader reads, read here at the same moment so
    # both agree; the inventory reports it (Inventory.keras) but may have been taken earlier.
    legacy = os.environ.get("TF_USE_LEGACY_KERAS")
    if legacy in _LEGACY_TRUE:
        try:
            import tf_keras
        except ImportError as err:
            legacy_error: ImportError | None = err
        else:
            module: ModuleType = tf_keras
            return module
    else:
        legacy_error = None
    try:
        import keras
    except ImportError as err:
        if legacy_error is not None:
            raise ImportError(
                f"TF_USE_LEGACY_KERAS={legacy} asks TensorFlow for tf_keras, which is not "
                f"installed ({legacy_error}), and Keras 3 is not installed either ({err}). "
                'Fix: pip install "tf-keras" for legacy Keras, or pip install "keras>=3" '
                "and unset TF_USE_LEGACY_KERAS."
            ) from err
        raise ImportError(
            f"TensorFlow needs the keras package, which is not installed ({err}). "
            'Fix: pip install "keras>=3" (or pip install "tf-keras" and set '
            "TF_USE_LEGACY_KERAS=1 for legacy Keras)."
        ) from err
    if legacy_error is not None:
        warnings.warn(
            f"TF_USE_LEGACY_KERAS={legacy} asks for legacy Keras (tf_keras), but tf_keras is "
            "not installed, so tf.keras cannot be used in this process (Ray Train sets this "
            "variable in every worker). tfplace uses Keras 3 (import keras) instead. Fix: "
            'pip install "tf-keras" if your code uses tf.keras; if it uses import keras, '
            'remove the variable first (os.environ.pop("TF_USE_LEGACY_KERAS", None) at the '
            "top of the training function).",
            TfplaceWarning,
            stacklevel=stacklevel,
        )
    modern: ModuleType = keras
    return modern


class TFConfig:
    """Thin calls into ``tf.config``: the one place tfplace reads and writes device settings.

    :func:`tfplace.inventory` reads devices through it and ``configure_gpus`` /
    ``configure_cpus`` apply their change sets through it (tests substitute a fake with the
    same methods, :class:`tfplace._configure.ConfigBackend`). No method starts the runtime except
    :meth:`logical_count`, which is only called once it has started.
    """

    def __init__(self) -> None:
        self.tf = load()

    def runtime_started(self) -> bool:
        return runtime_started()

    def gpus(self) -> list[Any]:
        return list(self.tf.config.list_physical_devices("GPU"))

    def cpus(self) -> list[Any]:
        return list(self.tf.config.list_physical_devices("CPU"))

    def get_visible(self, kind: str) -> list[Any]:
        return list(self.tf.config.get_visible_devices(kind))

    def set_visible(self, devices: list[Any], kind: str) -> None:
        self.tf.config.set_visible_devices(devices, kind)

    def get_growth(self, device: Any) -> bool:
        return bool(self.tf.config.experimental.get_memory_growth(device))

    def set_growth(self, device: Any, enabled: bool) -> None:
        self.tf.config.experimental.set_memory_growth(device, enabled)

    def get_split(self, device: Any) -> list[int | None] | None:
        split = self.tf.config.get_logical_device_configuration(device)
        return None if split is None else [c.memory_limit for c in split]

    def set_split(self, device: Any, limits: list[int | None]) -> None:
        conf = self.tf.config.LogicalDeviceConfiguration
        self.tf.config.set_logical_device_configuration(
            device, [conf(memory_limit=m) for m in limits]
        )

    def logical_count(self, kind: str) -> int:
        return len(self.tf.config.list_logical_devices(kind))

    def get_threads(self) -> tuple[int, int]:
        threading_ = self.tf.config.threading
        return (
            int(threading_.get_intra_op_parallelism_threads()),
            int(threading_.get_inter_op_parallelism_threads()),
        )

    def set_threads(self, intra: int | None, inter: int | None) -> None:
        if intra is not None:
            self.tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter is not None:
            self.tf.config.threading.set_inter_op_parallelism_threads(inter)

    # Reads the inventory needs beyond configuration.

    def gpu_details(self, device: Any) -> dict[str, Any]:
        """``get_device_details`` (name, compute capability); empty when unavailable."""
        try:
            return dict(self.tf.config.experimental.get_device_details(device))
        except Exception:  # optional facts: absent on some builds
            return {}

    def build_info(self) -> dict[str, Any]:
        try:
            return dict(self.tf.sysconfig.get_build_info())
        except Exception:  # optional facts: absent on some builds
            return {}

    def soft_placement(self) -> bool:
        return bool(self.tf.config.get_soft_device_placement())

    def functions_run_eagerly(self) -> bool:
        return bool(self.tf.config.functions_run_eagerly())


def cpu_device_count(seam: Any) -> int:
    """How many logical CPU devices exist (or will, once the runtime starts).

    After start-up TensorFlow lists them; before, the configured split of the first CPU says
    how many there will be (listing them would start the runtime). The one copy of this rule:
    the inventory and ``configure_cpus`` both read it.
    """
    if seam.runtime_started():
        return int(seam.logical_count("CPU"))
    cpus = seam.cpus()
    split = seam.get_split(cpus[0]) if cpus else None
    return len(split) if split else 1


def logical_device_names(kind: str | None = None) -> list[str]:
    """Names of TensorFlow's logical devices (of ``kind``); starts the runtime."""
    return [d.name for d in load().config.list_logical_devices(kind)]


def memory_stats(device: str) -> dict[str, int] | None:
    """``get_memory_info`` of a logical device: ``{"current": bytes, "peak": bytes}``.

    None where the device exists but its allocator keeps no statistics (TensorFlow 2.21's
    default CPU allocator; ``TF_CPU_ALLOCATOR_USE_BFC=true`` before start-up turns them on).

    Raises:
        ValueError: TensorFlow knows no such device.
    """
    try:
        return dict(load().config.experimental.get_memory_info(device))
    except ValueError as err:
        if "stats not available" in str(err):
            return None
        raise


def reset_memory_stats(device: str) -> None:
    """Reset the peak memory TensorFlow tracks for ``device`` (nothing where it tracks none)."""
    try:
        load().config.experimental.reset_memory_stats(device)
    except ValueError as err:
        if "Cannot reset memory stats" not in str(err):
            raise


def connect_tpu(address: str) -> Any:  # pragma: no cover - needs a TPU
    """Connect to the TPU at ``address`` ("" for the local TPU VM), initialise its system,
    and return the cluster resolver ``TPUStrategy`` takes."""
    tf = load()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver


def coordination_context() -> Any:
    """TensorFlow's eager context, whose coordination-service key-value calls multi-worker
    start-up uses (``set_config_key_value`` / ``get_config_key_value``)."""
    from tensorflow.python.eager import context

    return context.context()


def cross_device_ops(name: str) -> Any:
    """``tf.distribute.<class>()`` for a mirrored reduction name (KeyError if unknown)."""
    return getattr(load().distribute, MIRRORED_REDUCTIONS[name])()


def communication_options(name: str, timeout_seconds: float | None) -> Any:
    """``CommunicationOptions`` for a collective implementation name (KeyError if unknown)."""
    experimental = load().distribute.experimental
    implementation = getattr(
        experimental.CommunicationImplementation, COLLECTIVE_IMPLEMENTATIONS[name]
    )
    return experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=timeout_seconds
    )


def runtime_started() -> bool:
    """Whether TensorFlow's runtime (its eager context) has started in this process.

    Never starts it: when TensorFlow is not imported yet, the answer is False.
    """
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.eager import context
    except ImportError:  # pragma: no cover - TensorFlow layout changed
        return False
    ctx = context.context_safe()
    return ctx is not None and getattr(ctx, "_context_handle", None) is not None


def already_initialized(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's "cannot be modified after initialization" error."""
    text = str(err)
    return isinstance(err, RuntimeError | ValueError) and any(
        marker in text for marker in _AFTER_START_MARKERS
    )


def reraise_if_initialized(err: BaseException, what: str, fix: str) -> None:
    """Raise :class:`AlreadyInitializedError` chained to ``err`` if it is the start-up error."""
    if already_initialized(err):
        raise AlreadyInitializedError(
            f"{what}: TensorFlow's runtime has already started ({err}). {fix}"
        ) from err


def is_placement_error(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's failure to place an op on an explicit device."""
    text = str(err)
    return (
        "Could not satisfy explicit device specification" in text
        or "Could not satisfy device specification" in text
        or "no supported kernel" in text
    )


def is_resource_exhausted(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error from TensorFlow."""
    if "tensorflow" in sys.modules:
        tf = load()
        if isinstance(err, tf.errors.ResourceExhaustedError):
            return True
    text = str(err)
    return "OOM when allocating" in text or "CUDA_ERROR_OUT_OF_MEMORY" in text


def device_scope_ops() -> tuple[Callable[[str], Any], Callable[..., None]]:
    """Return ``(enter, exit)`` functions equivalent to entering and exiting ``tf.device(name)``.

    ``enter(name)`` returns a token that ``exit(token, exc_type, exc, tb)`` consumes. In eager
    mode, when TensorFlow has already parsed the ``(current device, name)`` pair (its own
    ``_device_parsing_cache``), the device is switched directly on the eager context, with the
    same two assignments ``tf.device`` makes; otherwise (first use of a pair, inside a
    ``tf.function``, graph mode) TensorFlow's own device scope is entered. The fast path is
    feature-detected once; if TensorFlow's internals differ, plain ``tf.device`` is used.
    """
    tf = load()
    tf_device = tf.device
    try:
        from tensorflow.python.eager import context
        from tensorflow.python.framework import ops

        cache = context._device_parsing_cache
        probe = context.context()
        fast = (
            isinstance(cache, dict)
            and callable(getattr(probe, "_set_device", None))
            and hasattr(type(probe), "device_name")
            and hasattr(type(probe), "device_spec")
        )
    except (ImportError, AttributeError):  # pragma: no cover - TensorFlow layout changed
        fast = False
    if not fast:  # pragma: no cover - TensorFlow layout changed

        def slow_enter(name: str) -> Any:
            scope = tf_device(name)
            scope.__enter__()
            return (None, scope, None)

        def slow_exit(token: Any, *exc: Any) -> None:
            token[1].__exit__(*exc)

        return slow_enter, slow_exit

    eager_context = context.context
    get_default_graph = ops.get_default_graph
    inside_function = ops.inside_function
    lookup = cache.get

    def enter(name: str) -> Any:
        ctx = eager_context()
        if ctx.executing_eagerly():
            old_name = ctx.device_name
            hit = lookup((old_name, name))
            if hit is not None:
                old_spec = ctx.device_spec
                ctx._set_device(hit[0], hit[1])
                return (ctx, old_name, old_spec)
            scope = ctx.device(name)
        elif inside_function():
            scope = get_default_graph().device(name)
        else:
            scope = tf_device(name)
        scope.__enter__()
        return (None, scope, None)

    def exit_(token: Any, exc_type: Any, exc: Any, tb: Any) -> None:
        ctx, first, second = token
        if ctx is not None:
            ctx._set_device(first, second)
        else:
            first.__exit__(exc_type, exc, tb)

    return enter, exit_


# -- named TensorFlow calls: the rest of tfplace touches TensorFlow only through these ---------


def is_dataset(obj: object) -> bool:
    """Whether ``obj`` is a ``tf.data.Dataset``."""
    return isinstance(obj, load().data.Dataset)


def data_autotune() -> int:
    """``tf.data.AUTOTUNE``."""
    return int(load().data.AUTOTUNE)


def shard_options(policy: str) -> Any:
    """``tf.data.Options`` with the auto-shard policy ``"data"``, ``"file"`` or ``"off"``."""
    data = load().data
    options = data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(
        data.experimental.AutoShardPolicy, policy.upper()
    )
    return options


def current_strategy() -> Any:
    """The strategy in force (``tf.distribute.get_strategy()``: the default one outside a scope)."""
    return load().distribute.get_strategy()


def one_device_strategy(device: str) -> Any:
    """``tf.distribute.OneDeviceStrategy(device)``."""
    return load().distribute.OneDeviceStrategy(device)


def mirrored_strategy(devices: list[str], reduction: str) -> Any:
    """``tf.distribute.MirroredStrategy`` over ``devices`` with the named reduction."""
    distribute, ops = load().distribute, cross_device_ops(reduction)
    # in collective keys of its own: XLA on GPUs all-reduces with them (tensorflow#61314)
    return _own_keys(lambda: distribute.MirroredStrategy(devices=devices, cross_device_ops=ops))


def tpu_strategy(address: str) -> Any:  # pragma: no cover - needs a TPU
    """``tf.distribute.TPUStrategy`` on the TPU at ``address`` ("" for the local TPU VM)."""
    return load().distribute.TPUStrategy(connect_tpu(address))


def multi_worker_base() -> type:
    """``tf.distribute.MultiWorkerMirroredStrategy``, the class tfplace's strategy extends."""
    base: type = load().distribute.MultiWorkerMirroredStrategy
    return base


def is_multi_worker(strategy: object) -> bool:
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` (tfplace's subclass included)."""
    return isinstance(strategy, load().distribute.MultiWorkerMirroredStrategy)


def nest() -> ModuleType:
    """``tf.nest``: ``is_nested`` / ``map_structure`` over Keras's nested values."""
    module: ModuleType = load().nest
    return module


def simple_cluster_resolver(
    jobs: dict[str, list[str]], task_type: str | None, task_id: int | None
) -> Any:
    """A ``SimpleClusterResolver`` over ``jobs`` for one task (gRPC)."""
    distribute = load().distribute
    return distribute.cluster_resolver.SimpleClusterResolver(
        load().train.ClusterSpec(jobs), task_type=task_type, task_id=task_id, rpc_layer="grpc"
    )


def profiler_start(folder: str) -> None:
    """Start TensorFlow's profiler, writing a trace into ``folder``."""
    load().profiler.experimental.start(folder)


def profiler_stop() -> None:
    """Stop TensorFlow's profiler (the trace is written)."""
    load().profiler.experimental.stop()


def profile_trace() -> Any:
    """The profiler's ``Trace`` context manager class (marks steps in a trace)."""
    return load().profiler.experimental.Trace


def clear_keras_session() -> None:
    """``keras.backend.clear_session()`` of the Keras flavour in use (frees models, graphs)."""
    load_keras(stacklevel=3).backend.clear_session()


def device_check(device: str) -> float:
    """Run a matmul and a convolution on ``device``; return the sum of both results.

    NaN means the kernels ran but computed garbage; an exception means they did not run.
    """
    tf = load()
    with tf.device(device):
        a = tf.random.stateless_normal((256, 256), seed=(1, 2))
        product = tf.linalg.matmul(a, a)
        image = tf.random.stateless_normal((2, 32, 32, 3), seed=(3, 4))
        kernel = tf.random.stateless_normal((3, 3, 3, 8), seed=(5, 6))
        conv = tf.nn.conv2d(image, kernel, strides=1, padding="SAME")
        return float(tf.reduce_sum(product)) + float(tf.reduce_sum(conv))


def keras_of(model: object) -> ModuleType:
    """The Keras package a model comes from: ``keras`` (Keras 3) or ``tf_keras``."""
    root = type(model).__module__.split(".")[0]
    if root in ("keras", "tf_keras"):
        return importlib.import_module(root)
    return load_keras(stacklevel=3)


# -- strategies side by side in one process (tensorflow#61314) ---------------------------------

#: Collective group keys each ``MirroredStrategy`` range spans; range 0 is TensorFlow's default.
_COLLECTIVE_KEY_STRIDE = 100_000
_key_lock = threading.Lock()
_key_ranges = iter(range(1, 2**31 // _COLLECTIVE_KEY_STRIDE))


def fresh_collective_keys() -> int:
    """Make the next ``tf.distribute.MirroredStrategy`` use collective keys no other one used.

    Every ``MirroredStrategy`` numbers its collective groups from the class attribute
    ``_collective_key_base`` (0 unless set; TensorFlow's own tests set it). Two strategies of
    different sizes in one process then join the same group, and the process's collectives
    abort for good ("joining a group with size 4, but that group has size 2",
    tensorflow#61314). Moving the base to a new range before each strategy prevents it.

    Returns:
        The new key base.
    """
    cls = load().distribute.MirroredStrategy
    with _key_lock:
        base = next(_key_ranges) * _COLLECTIVE_KEY_STRIDE
        cls._collective_key_base = base
    return base


def _own_keys(make: Callable[[], Any]) -> Any:
    """``make()`` a MirroredStrategy in its own key range; the class then points at a fresh
    range, so the next strategy anyone builds does not share this one's keys either."""
    fresh_collective_keys()
    try:
        return make()
    finally:
        fresh_collective_keys()


def collective_mirrored_strategy(devices: list[str]) -> Any:
    """``tf.distribute.MirroredStrategy(devices)`` with TensorFlow's default reduction
    (collective all-reduce), in collective keys of its own (see :func:`fresh_collective_keys`)."""
    distribute = load().distribute
    return _own_keys(lambda: distribute.MirroredStrategy(devices=devices))


# -- the replica check (tfplace._replicas): the Keras and tf.data calls it makes ---------------

#: Keras layers whose output is random in training: they draw other numbers per replica.
_RANDOM_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomCrop",
    "RandomContrast",
)


def keras_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``: Python's, NumPy's and TensorFlow's seeds."""
    load_keras(stacklevel=3).utils.set_random_seed(seed)


def keras_policy() -> str:
    """The name of Keras's global dtype policy (``"float32"``, ``"mixed_float16"``, ...)."""
    return str(load_keras(stacklevel=3).mixed_precision.global_policy().name)


def set_keras_policy(name: str) -> None:
    """``keras.mixed_precision.set_global_policy(name)``."""
    load_keras(stacklevel=3).mixed_precision.set_global_policy(name)


def fresh_keras_names() -> None:
    """Reset Keras's name counters (``clear_session``), keeping the global dtype policy, so
    two builds of one model name their variables alike (``sequential/dense/kernel``)."""
    policy = keras_policy()
    clear_keras_session()
    set_keras_policy(policy)


def layer_kinds(model: Any) -> list[tuple[str, str]]:
    """``(name, kind)`` of every layer of ``model``, nested ones included; kind is
    ``"batchnorm"`` (not synchronized across replicas), ``"random"`` or ``"other"``."""
    keras = keras_of(model)
    random = tuple(getattr(keras.layers, n) for n in _RANDOM_LAYERS if hasattr(keras.layers, n))
    found: list[tuple[str, str]] = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        synced = getattr(layer, "synchronized", False) or "Sync" in type(layer).__name__
        if isinstance(layer, keras.layers.BatchNormalization) and not synced:
            found.append((layer.name, "batchnorm"))
        elif random and isinstance(layer, random):
            found.append((layer.name, "random"))
        else:
            found.append((layer.name, "other"))
        stack.extend(getattr(layer, "layers", []))
    return found


def replica_arrays(strategy: Any, element: Any) -> list[list[Any]]:
    """Per component of one input element, its per-replica values as NumPy arrays (one entry
    when the element is a plain, undistributed value)."""
    tf = load()
    out: list[list[Any]] = []
    for part in tf.nest.flatten(element, expand_composites=False):
        local = strategy.experimental_local_results(part)
        out.append([tf.convert_to_tensor(v).numpy() for v in local])
    return out


def fit_steps(model: Any, data: Any, steps: int, after_step: Callable[[float], None]) -> None:
    """``model.fit(data)`` for ``steps`` steps; ``after_step(loss)`` after each, with that
    step's loss alone (the metrics are reset before every step)."""
    base: Any = keras_of(model).callbacks.Callback

    class _Steps(base):  # type: ignore[misc]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            model.reset_metrics()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            after_step(float((logs or {}).get("loss", float("nan"))))

    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[_Steps()])


# -- tf.io.gfile: files on any file system TensorFlow knows (local, gs://, ram://, ...) ------


def gfile_exists(path: str) -> bool:
    """``tf.io.gfile.exists``: whether a file or folder exists."""
    return bool(load().io.gfile.exists(path))


def gfile_isdir(path: str) -> bool:
    """``tf.io.gfile.isdir``: whether ``path`` is a folder."""
    return bool(load().io.gfile.isdir(path))


def gfile_listdir(path: str) -> list[str]:
    """``tf.io.gfile.listdir``: the names in a folder (object stores may end folders in ``/``)."""
    return [str(name) for name in load().io.gfile.listdir(path)]


def gfile_makedirs(path: str) -> None:
    """``tf.io.gfile.makedirs``: create a folder and its parents (no error if it exists)."""
    load().io.gfile.makedirs(path)


def gfile_rename(source: str, target: str, overwrite: bool = False) -> None:
    """``tf.io.gfile.rename``: atomic on a local file system; object stores copy, then
    delete, object by object."""
    load().io.gfile.rename(source, target, overwrite=overwrite)


def gfile_rmtree(path: str) -> None:
    """``tf.io.gfile.rmtree``, and nothing when ``path`` is already gone."""
    gfile = load().io.gfile
    if gfile.exists(path):
        gfile.rmtree(path)


def gfile_remove(path: str) -> None:
    """``tf.io.gfile.remove``: delete one file, and nothing when it is already gone."""
    gfile = load().io.gfile
    if gfile.exists(path):
        gfile.remove(path)


def gfile_read_text(path: str) -> str:
    """The text of a file, through ``tf.io.gfile.GFile``."""
    with load().io.gfile.GFile(path, "r") as handle:
        return str(handle.read())


def gfile_write_text(path: str, text: str) -> None:
    """Write ``text`` to a file (replacing it), through ``tf.io.gfile.GFile``."""
    with load().io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def is_already_exists(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's ``AlreadyExistsError`` (e.g. a key set twice)."""
    return "tensorflow" in sys.modules and isinstance(err, load().errors.AlreadyExistsError)


def is_deadline_exceeded(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's ``DeadlineExceededError`` (a wait that timed out)."""
    return "tensorflow" in sys.modules and isinstance(err, load().errors.DeadlineExceededError)
