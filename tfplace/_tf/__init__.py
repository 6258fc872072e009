"""The TensorFlow seam: the only package that imports TensorFlow or Keras.

Everything else in tfplace calls the named functions re-exported here (``from tfplace import
_tf``; ``_tf.mirrored_strategy(...)``), inside the functions that need TensorFlow, so
``import tfplace`` stays fast and never starts TensorFlow. TensorFlow's error texts are
matched here, once, and turned into tfplace errors.

The modules, by concern:

- ``_core``: loading TensorFlow and the right Keras, the runtime's state, TensorFlow's errors;
- ``_devices``: ``tf.config`` (:class:`TFConfig`), device scopes, memory, the profiler;
- ``_strategies``: ``tf.distribute`` constructors, collective keys, the coordination service;
- ``_data``: ``tf.data`` options and ``tf.io.gfile``;
- ``_keras``: Keras calls (session, dtype policy) and the Keras internals tfplace relies on;
- ``_probes``: the list of those internals and the one message when one changed;
- ``_replica_check``: the Keras and tf.data calls of the replica check.
"""

from __future__ import annotations

from tfplace._tf._core import (
    INSTALL_HINT as INSTALL_HINT,
    already_initialized as already_initialized,
    is_already_exists as is_already_exists,
    is_deadline_exceeded as is_deadline_exceeded,
    is_placement_error as is_placement_error,
    is_resource_exhausted as is_resource_exhausted,
    keras_of as keras_of,
    load as load,
    load_keras as load_keras,
    nest as nest,
    reraise_if_initialized as reraise_if_initialized,
    runtime_started as runtime_started,
)
from tfplace._tf._data import (
    data_autotune as data_autotune,
    dataset_inputs as dataset_inputs,
    gfile_exists as gfile_exists,
    gfile_isdir as gfile_isdir,
    gfile_listdir as gfile_listdir,
    gfile_makedirs as gfile_makedirs,
    gfile_read_text as gfile_read_text,
    gfile_remove as gfile_remove,
    gfile_rename as gfile_rename,
    gfile_rmtree as gfile_rmtree,
    gfile_write_text as gfile_write_text,
    is_dataset as is_dataset,
    shard_options as shard_options,
)
from tfplace._tf._devices import (
    TFConfig as TFConfig,
    connect_tpu as connect_tpu,
    cpu_device_count as cpu_device_count,
    device_check as device_check,
    device_scope_ops as device_scope_ops,
    logical_device_names as logical_device_names,
    memory_stats as memory_stats,
    profile_trace as profile_trace,
    profiler_start as profiler_start,
    profiler_stop as profiler_stop,
    reset_memory_stats as reset_memory_stats,
)
from tfplace._tf._keras import (
    CHECKPOINT_HOOKS as CHECKPOINT_HOOKS,
    check_checkpoint_hooks as check_checkpoint_hooks,
    clear_initial_epoch as clear_initial_epoch,
    clear_keras_session as clear_keras_session,
    flat_layers as flat_layers,
    keras_policy as keras_policy,
    set_initial_epoch as set_initial_epoch,
    set_keras_policy as set_keras_policy,
    skip_train_steps as skip_train_steps,
    steps_per_execution as steps_per_execution,
    stock_callback_classes as stock_callback_classes,
    wrap_method as wrap_method,
    writes_like_stock as writes_like_stock,
)
from tfplace._tf._probes import (
    INTERNALS as INTERNALS,
    TESTED_VERSIONS as TESTED_VERSIONS,
    Internal as Internal,
    installed_versions as installed_versions,
    internal_missing as internal_missing,
    internal_text as internal_text,
    tested_versions as tested_versions,
)
from tfplace._tf._replica_check import (
    fit_steps as fit_steps,
    fresh_keras_names as fresh_keras_names,
    keras_random_seed as keras_random_seed,
    layer_kinds as layer_kinds,
    replica_arrays as replica_arrays,
)
from tfplace._tf._strategies import (
    COLLECTIVE_IMPLEMENTATIONS as COLLECTIVE_IMPLEMENTATIONS,
    MIRRORED_REDUCTIONS as MIRRORED_REDUCTIONS,
    collective_mirrored_strategy as collective_mirrored_strategy,
    communication_options as communication_options,
    coordination_context as coordination_context,
    cross_device_ops as cross_device_ops,
    current_strategy as current_strategy,
    fresh_collective_keys as fresh_collective_keys,
    is_multi_worker as is_multi_worker,
    mirrored_strategy as mirrored_strategy,
    multi_worker_base as multi_worker_base,
    one_device_strategy as one_device_strategy,
    simple_cluster_resolver as simple_cluster_resolver,
    strategy_num_workers as strategy_num_workers,
    tpu_strategy as tpu_strategy,
)

__all__ = [
    "CHECKPOINT_HOOKS",
    "COLLECTIVE_IMPLEMENTATIONS",
    "INSTALL_HINT",
    "INTERNALS",
    "MIRRORED_REDUCTIONS",
    "TESTED_VERSIONS",
    "Internal",
    "TFConfig",
    "already_initialized",
    "check_checkpoint_hooks",
    "clear_initial_epoch",
    "clear_keras_session",
    "collective_mirrored_strategy",
    "communication_options",
    "connect_tpu",
    "coordination_context",
    "cpu_device_count",
    "cross_device_ops",
    "current_strategy",
    "data_autotune",
    "dataset_inputs",
    "device_check",
    "device_scope_ops",
    "fit_steps",
    "flat_layers",
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
    "installed_versions",
    "internal_missing",
    "internal_text",
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
    "set_initial_epoch",
    "set_keras_policy",
    "shard_options",
    "simple_cluster_resolver",
    "skip_train_steps",
    "steps_per_execution",
    "stock_callback_classes",
    "strategy_num_workers",
    "tested_versions",
    "tpu_strategy",
    "wrap_method",
    "writes_like_stock",
]
