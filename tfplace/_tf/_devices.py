"""Devices: ``tf.config`` reads and writes, device scopes, memory, the profiler, the TPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tfplace._tf._core import load, runtime_started

__all__ = [
    "TFConfig",
    "connect_tpu",
    "cpu_device_count",
    "device_check",
    "device_scope_ops",
    "logical_device_names",
    "memory_stats",
    "profile_trace",
    "profiler_start",
    "profiler_stop",
    "reset_memory_stats",
]


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


def tf32_enabled() -> bool:
    """Whether TensorFlow runs float32 matmuls and convolutions in TF32 on GPUs that can
    (compute capability 8.0 and up): its default, off after
    ``tf.config.experimental.enable_tensor_float_32_execution(False)``. (``NVIDIA_TF32_OVERRIDE=0``
    turns it off below TensorFlow, which this does not see: the inventory reads that variable.)
    """
    return bool(load().config.experimental.tensor_float_32_execution_enabled())


def connect_tpu(address: str) -> Any:  # pragma: no cover - needs a TPU
    """Connect to the TPU at ``address`` ("" for the local TPU VM), initialise its system,
    and return the cluster resolver ``TPUStrategy`` takes."""
    tf = load()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver


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


def profiler_start(folder: str) -> None:
    """Start TensorFlow's profiler, writing a trace into ``folder``."""
    load().profiler.experimental.start(folder)


def profiler_stop() -> None:
    """Stop TensorFlow's profiler (the trace is written)."""
    load().profiler.experimental.stop()


def profile_trace() -> Any:
    """The profiler's ``Trace`` context manager class (marks steps in a trace)."""
    return load().profiler.experimental.Trace
