"""The pytest plugin's decision: what one test process gets, from its settings. Pure.

No pytest, no TensorFlow: the plugin (``tfplace.pytest_plugin``) reads the settings and the
visible GPUs, calls :func:`decide_session`, and applies the frozen :class:`SessionSetup`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "SETTINGS",
    "XDIST_ENV",
    "SessionSetup",
    "Setting",
    "activate_always",
    "decide_session",
    "setting_flag",
]

KINDS = ("default", "one_device", "mirrored")
#: Setting name -> its default, as the text a user would write.
SETTINGS = {
    "activate": "auto",
    "virtual_cpus": "2",
    "strategies": ",".join(KINDS),
    "gpu_memory": "growth",
    "hide_gpus": "false",
    "logical_gpus": "1",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
XDIST_ENV = "PYTEST_XDIST_WORKER_COUNT"


@dataclass(frozen=True)
class Setting:
    """One plugin setting as written, and where it came from.

    Attributes:
        value: the text, e.g. ``"growth"`` or ``"2"``.
        source: ``"--tfplace-gpu-memory"``, ``"ini tfplace_gpu_memory"`` or ``"default"``.
    """

    value: str
    source: str = "default"


@dataclass(frozen=True)
class SessionSetup:
    """What the plugin applies to one test process, and why. Built by :func:`decide_session`.

    Attributes:
        virtual_cpus: split the CPU into this many devices (1: no split).
        strategies: the kinds ``tfplace_strategy`` offers.
        hide_gpus: hide every GPU (``configure_gpus(visible=[])``).
        gpu_memory: the GPU memory setting in words: ``growth``, ``none``, ``N MB``, or
            ``unused (GPUs hidden)``; it applies only where GPUs are visible.
        memory_growth: call ``configure_gpus(memory_growth=True)``.
        memory_limit_mb: call ``configure_gpus(memory_limit_mb=...)`` with this, or None.
        logical_gpus: split each visible GPU into this many logical GPUs (1: no split).
        env: environment variables set for the session (and the processes tests start),
            restored at its end.
        visible_gpus: the GPUs TensorFlow showed this process before anything was applied.
        xdist_workers: pytest-xdist's worker count, None outside xdist.
        sources: ``(setting, where its value came from)`` for every setting.
        reasons: why, one sentence per decision.
    """

    virtual_cpus: int
    strategies: tuple[str, ...]
    hide_gpus: bool
    gpu_memory: str
    memory_growth: bool
    memory_limit_mb: int | None
    env: tuple[tuple[str, str], ...]
    logical_gpus: int
    visible_gpus: int
    xdist_workers: int | None
    sources: tuple[tuple[str, str], ...]
    reasons: tuple[str, ...]

    def source(self, name: str) -> str:
        """Where setting ``name`` came from (``"default"`` when nobody set it)."""
        return dict(self.sources).get(name, "default")


def _count(raw: Setting, what: str) -> int:
    text = raw.value.strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"tfplace: {raw.source} must be {what}, found {raw.value!r}; "
            "fix the value or remove it to use the default"
        )
    return int(text)


def setting_flag(raw: Setting) -> bool:
    text = raw.value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(
        f"tfplace: {raw.source} must be true or false, found {raw.value!r}; "
        f"use one of {', '.join(_TRUE + _FALSE)}"
    )


def _memory(raw: Setting) -> str | int:
    text = raw.value.strip().lower()
    if text in ("growth", "none"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(
        f"tfplace: {raw.source} must be growth, none or a limit in MB per GPU (e.g. 4096), "
        f"found {raw.value!r}"
    )


def _kinds(raw: Setting) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in raw.value.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(
            f"tfplace: {raw.source} lists unknown strategy kind(s) {bad or [raw.value]}; "
            f"expected some of {', '.join(KINDS)}"
        )
    return kinds


def activate_always(raw: Setting) -> bool:
    text = raw.value.strip().lower()
    if text not in ("auto", "always"):
        raise ValueError(f"tfplace: {raw.source} must be auto or always, found {raw.value!r}")
    return text == "always"


def _gpu_memory(
    s: Mapping[str, Setting],
    memory: str | int,
    *,
    hide: bool,
    logical: int,
    visible_gpus: int,
    workers: int | None,
    environ: Mapping[str, str],
) -> tuple[str | int, bool, int | None, list[tuple[str, str]], list[str]]:
    """The GPU part of :func:`decide_session`: (memory, growth, limit, env, reasons)."""
    reasons: list[str] = []
    env: list[tuple[str, str]] = []
    growth, limit = False, None
    gpus = f"{visible_gpus} GPU{'s' if visible_gpus != 1 else ''} visible"
    shared = f" shared by {workers} xdist workers" if workers and workers > 1 else ""
    if hide:
        memory = "unused (GPUs hidden)"
        env.append(("CUDA_VISIBLE_DEVICES", "-1"))
        reasons.append(
            f"GPUs hidden ({s['hide_gpus'].source}): TensorFlow in this process uses none, "
            "processes the tests start get CUDA_VISIBLE_DEVICES=-1"
        )
        if s["gpu_memory"].source != "default":
            reasons.append(
                f"GPU memory {s['gpu_memory'].value!r} ({s['gpu_memory'].source}) ignored: "
                "the GPUs are hidden"
            )
    elif visible_gpus == 0:
        reasons.append("no GPU visible: no GPU memory setting to apply")
    elif memory == "growth":
        growth = True
        reasons.append(
            f"{gpus}{shared}: memory growth, so each test process allocates only what it uses "
            "and several processes can share a GPU"
        )
        if "TF_FORCE_GPU_ALLOW_GROWTH" not in environ:
            env.append(("TF_FORCE_GPU_ALLOW_GROWTH", "true"))
    elif memory == "none":
        reasons.append(
            f"{gpus}{shared}: TensorFlow's default, the first process to start TensorFlow maps "
            "nearly all memory of each GPU"
            + (" and the other workers run out of memory" if shared else "")
        )
    else:
        limit = int(memory)
        need = f"; together {workers * limit} MB of each GPU" if workers and workers > 1 else ""
        if logical > 1:
            reasons.append(
                f"{gpus}{shared}: each split into {logical} logical GPUs of {limit} MB "
                f"({s['logical_gpus'].source}), so mirrored tests run over "
                f"{visible_gpus * logical} GPUs"
            )
        else:
            reasons.append(
                f"{gpus}{shared}: each test process may use {limit} MB of each GPU{need}"
            )
    return memory, growth, limit, env, reasons


def decide_session(
    settings: Mapping[str, Setting], *, visible_gpus: int, environ: Mapping[str, str]
) -> SessionSetup:
    """Decide what the plugin applies to a test process. Pure: no TensorFlow, no side effects.

    GPU memory defaults to growth, also under pytest-xdist. An even per-worker share (each
    process capped at total / workers) was considered and not taken: TensorFlow cannot report a
    GPU's total memory before its runtime starts, which is when the cap must be set, and a fixed
    share fails a test that needs more than 1/N of the GPU even while the other workers sit
    idle. Growth lets each process take what it uses; concurrent tests that together exceed the
    GPU fail either way. A hard cap stays available: ``--tfplace-gpu-memory=MB``.

    Args:
        settings: setting name (``virtual_cpus``, ``strategies``, ``gpu_memory``,
            ``hide_gpus``, ``activate``) -> its value and source; a missing name takes the
            default.
        visible_gpus: GPUs TensorFlow shows this process before the plugin applies anything.
        environ: the environment; ``PYTEST_XDIST_WORKER_COUNT`` and
            ``TF_FORCE_GPU_ALLOW_GROWTH`` are read from it.

    Returns:
        The frozen :class:`SessionSetup`, with the source of every setting and the reasons.

    Raises:
        ValueError: a bad value; the message names where it came from.

    Example:
        >>> setup = decide_session({}, visible_gpus=0, environ={})
        >>> setup.virtual_cpus, setup.memory_growth, setup.reasons[-1]
        (2, False, 'no GPU visible: no GPU memory setting to apply')
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"decide_session: unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
    if isinstance(visible_gpus, bool) or not isinstance(visible_gpus, int) or visible_gpus < 0:
        raise ValueError(
            f"decide_session: visible_gpus must be an int >= 0, found {visible_gpus!r}"
        )
    s = {name: settings.get(name, Setting(default)) for name, default in SETTINGS.items()}
    activate_always(s["activate"])
    cpus = _count(s["virtual_cpus"], "a positive integer")
    kinds = _kinds(s["strategies"])
    memory = _memory(s["gpu_memory"])
    hide = setting_flag(s["hide_gpus"])
    logical = _count(s["logical_gpus"], "a positive integer")
    if logical > 1 and not hide and not isinstance(memory, int):
        raise ValueError(
            f"tfplace: {s['logical_gpus'].source} = {logical} needs a GPU memory limit in MB "
            f"(the memory of each logical GPU), found {s['gpu_memory'].source} = "
            f"{s['gpu_memory'].value!r}; set --tfplace-gpu-memory=MB, e.g. 4096"
        )
    workers: int | None = None
    if environ.get(XDIST_ENV):
        workers = _count(Setting(environ[XDIST_ENV], f"environment {XDIST_ENV}"), "an integer")
    memory, growth, limit, env, reasons = _gpu_memory(
        s,
        memory,
        hide=hide,
        logical=logical,
        visible_gpus=visible_gpus,
        workers=workers,
        environ=environ,
    )
    words = f"{memory} MB" if isinstance(memory, int) else memory
    return SessionSetup(
        virtual_cpus=cpus,
        strategies=kinds,
        hide_gpus=hide,
        gpu_memory=words,
        memory_growth=growth,
        memory_limit_mb=limit,
        env=tuple(env),
        logical_gpus=logical if limit is not None else 1,
        visible_gpus=visible_gpus,
        xdist_workers=workers,
        sources=tuple((name, value.source) for name, value in s.items()),
        reasons=tuple(reasons),
    )
