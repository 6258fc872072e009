"""Helpers for tests: synthetic inventories for device-dependent decisions on any machine, and
a one-line check that the user's training gives the same result on 1 and on N replicas.

Example:
    >>> from tfplace.testing import fake_inventory
    >>> tfplace.plan(inventory=fake_inventory(gpus=2)).kind
    'mirrored'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tfplace._facts.inventory import (
    ClusterEnv,
    CPUInfo,
    GPUInfo,
    Inventory,
    KerasInfo,
    NvidiaInfo,
    TFInfo,
    TPUInfo,
    use_inventory,
)
from tfplace._facts.nvidia import cuda_for_driver, parse_driver_version

if TYPE_CHECKING:
    from collections.abc import Callable

    from tfplace.replicas._report import ReplicaReport

__all__ = ["assert_same_training", "fake_inventory", "use_inventory"]

#: ``/proc/driver/nvidia/version``'s first line on the H100 host of tests/fixtures/gpu-host.
_H100_DRIVER_LINE = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)"
)


def fake_inventory(
    gpus: int | Sequence[GPUInfo] = 0,
    *,
    compute_capability: tuple[int, int] | None = (8, 0),
    gpu_name: str = "Fake GPU",
    cores: int = 8,
    quota_cores: float | None = None,
    virtual_cpus: int = 1,
    platform: str = "linux",
    cuda_build: bool | None = None,
    tf_version: str | None = "2.21.0",
    keras: str = "keras3",
    tpu: bool = False,
    tf_config: str | Mapping[str, Any] | None = None,
    slurm: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    runtime_started: bool = False,
    packages: Mapping[str, str] | None = None,
    nvidia_driver: str | None = "default",
    functions_run_eagerly: bool = False,
    driver_version: str | None = "default",
    cuda_driver_version: str | None = "default",
    nvidia_gpus: Sequence[GPUInfo] | None = None,
    gpu_source: str = "default",
    mig_gpus: Sequence[int] = (),
) -> Inventory:
    """Build an :class:`~tfplace.Inventory` describing a machine that is not here.

    Args:
        gpus: how many GPUs (all alike), or explicit :class:`GPUInfo` records.
        compute_capability: of each generated GPU.
        gpu_name: of each generated GPU.
        cores: host cores (and affinity).
        quota_cores: a cgroup CPU quota in cores.
        virtual_cpus: logical CPU devices.
        platform: ``sys.platform`` value, e.g. ``"win32"``.
        cuda_build: whether TensorFlow is a CUDA build (default: when there are GPUs).
        tf_version: TensorFlow's version, None for "not installed".
        keras: ``"keras3"`` or ``"tf_keras"``.
        tpu: pretend a TPU is attached (``TPU_NAME=fake-tpu``).
        tf_config: a TF_CONFIG value (JSON text or a dict).
        slurm: SLURM variables.
        env: other environment variables.
        runtime_started: whether TensorFlow's runtime has started.
        packages: installed distributions ``{name: version}``; by default the TensorFlow
            distribution (``tensorflow`` for a CUDA build, else ``tensorflow-cpu``) and
            ``tensorboard``.
        nvidia_driver: the driver version line; by default one exists when there are GPUs
            (the line captured on an H100 host, driver 580.159.04).
        functions_run_eagerly: whether ``tf.config.run_functions_eagerly(True)`` is in force.
        driver_version: the parsed driver version; by default read from ``nvidia_driver``.
        cuda_driver_version: the CUDA version the driver supports; by default the one NVIDIA's
            table gives for ``driver_version`` (``"13.0"`` for 580.159.04).
        nvidia_gpus: every GPU the driver sees (``inventory().nvidia.gpus``); by default the
            generated GPUs, marked visible to TensorFlow when TensorFlow is a CUDA build.
            Pass records with ``visible=False`` (and ``gpus=0``) for GPUs TensorFlow does not
            see.
        gpu_source: ``"nvml"``, ``"nvidia-smi"``, ``"proc"``, ``"tensorflow"`` or ``"none"``;
            by default ``"nvml"`` when the driver sees a GPU, else ``"none"``.
        mig_gpus: driver indexes of GPUs in MIG mode.

    Example:
        >>> h100 = GPUInfo(0, "NVIDIA H100", (9, 0), 81559, visible=False)
        >>> inv = fake_inventory(tf_version=None, nvidia_gpus=[h100])
        >>> inv.nvidia.gpus[0].visible, inv.nvidia.driver_version, inv.nvidia.cuda_driver_version
        (False, '580.159.04', '13.0')
    """
    if isinstance(gpus, int):
        gpu_list = tuple(
            GPUInfo(index=i, name=gpu_name, compute_capability=compute_capability)
            for i in range(gpus)
        )
    else:
        gpu_list = tuple(gpus)
    cuda = bool(gpu_list) if cuda_build is None else cuda_build
    environ = dict(env or {})
    if tf_config is not None:
        environ["TF_CONFIG"] = tf_config if isinstance(tf_config, str) else json.dumps(tf_config)
    if slurm:
        environ.update(slurm)
    if keras == "tf_keras":
        environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    tf_info = (
        TFInfo(
            version=tf_version,
            is_cuda_build=cuda,
            cuda_version="12.5.1" if cuda else None,
            cudnn_version="9" if cuda else None,
            compute_capabilities=("sm_60", "sm_70", "sm_80", "sm_89", "compute_90") if cuda else (),
        )
        if tf_version
        else None
    )
    if packages is None:
        # what pip installs for TensorFlow, with TensorBoard (its callback's companion)
        packages = (
            {"tensorflow" if cuda else "tensorflow-cpu": tf_version, "tensorboard": "2.20.0"}
            if tf_version
            else {}
        )
    driver_line = (
        (_H100_DRIVER_LINE if gpu_list or nvidia_gpus else None)
        if nvidia_driver == "default"
        else nvidia_driver
    )
    drv = parse_driver_version(driver_line) if driver_version == "default" else driver_version
    cuda_drv = cuda_for_driver(drv) if cuda_driver_version == "default" else cuda_driver_version
    if nvidia_gpus is None:
        seen = tuple(replace(g, visible=cuda and g.visible) for g in gpu_list) if drv else ()
    else:
        seen = tuple(nvidia_gpus)
    source = ("nvml" if seen else "none") if gpu_source == "default" else gpu_source
    nvidia = NvidiaInfo(
        driver_version=drv,
        cuda_driver_version=cuda_drv,
        gpu_source=source,  # type: ignore[arg-type]
        gpus=seen,
        mig_gpus=tuple(mig_gpus),
    )
    return Inventory(
        python="3.11.7",
        platform=platform,
        machine="x86_64",
        tensorflow=tf_info,
        keras=KerasInfo(keras if keras in ("keras3", "tf_keras") else "missing", "3.15.1"),  # type: ignore[arg-type]
        gpus=gpu_list,
        cpu=CPUInfo(
            host_cores=cores,
            affinity_cores=cores,
            quota_cores=quota_cores,
            logical_devices=virtual_cpus,
        ),
        tpu=TPUInfo(hints=("TPU_NAME=fake-tpu",), name="fake-tpu") if tpu else TPUInfo(),
        cluster=ClusterEnv(
            tf_config=environ.get("TF_CONFIG"),
            slurm=tuple(sorted((k, v) for k, v in environ.items() if k.startswith("SLURM_"))),
        ),
        env=tuple(sorted(environ.items())),
        packages=tuple(sorted(packages.items())),
        runtime_started=runtime_started,
        soft_placement=True,
        functions_run_eagerly=functions_run_eagerly,
        nvidia_driver=driver_line,
        nvidia=nvidia,
    )


def assert_same_training(
    build: Callable[[], Any], data: Callable[[Any], Any], **options: Any
) -> ReplicaReport:
    """Fail the test unless the training gives the same result on 1 and on N replicas.

    :func:`tfplace.compare_replicas` for tests: raises ``AssertionError`` with the report's
    text (where the runs part, the loss side by side, the likely causes and their fixes) when
    they part; returns the report when they agree.

    Args:
        build: makes and compiles the Keras model (see :func:`tfplace.compare_replicas`).
        data: ``data(strategy)`` returns the input as the training consumes it.
        **options: ``replicas``, ``steps``, ``rtol``, ``atol``, ``train_step``, ``devices``,
            ``reduction``, ``seed``, as :func:`tfplace.compare_replicas` takes them.

    Returns:
        The :class:`tfplace.ReplicaReport` of a check that passed.

    Raises:
        AssertionError: 1 and N replicas part; the message is the report.

    Example:
        Trains on 4 CPU devices of this machine (skipped here); in a test module:

        >>> def test_training_is_replica_invariant():  # doctest: +SKIP
        ...     assert_same_training(build, data, replicas=4)
    """
    from tfplace.replicas._check import compare_replicas

    report = compare_replicas(build, data, **options)
    if not report.same:
        raise AssertionError("\n" + str(report))
    return report
