"""``tfplace doctor``: what TensorFlow can use here, why a GPU is not used, and how to fix it.

The doctor does three jobs, each in its own private module; this module gathers their
public names:

- **rules** (``tfplace.doctor._rules``): :func:`findings`, a pure function from an
  :class:`~tfplace.Inventory` to :class:`Finding` records (severity, what, why, fix, link);
  ``tfplace.doctor._rules.RULES`` lists the rules.
- **explainer** (``tfplace.doctor._explain``): :func:`explain_error` maps a TensorFlow error
  text to the finding that names its fix.
- **verify** (``tfplace.doctor._verify``): ``verify()`` runs a real matmul and convolution
  on every device (the only part that starts TensorFlow).

- **library check** (``tfplace.doctor._cuda_libs``): loads each CUDA library of a CUDA build
  in a child process (finding B10);
- **quiet** (``tfplace.doctor._quiet``): captures the lines TensorFlow writes to stderr while
  the doctor imports or starts it.

:func:`diagnose` puts them together as a :class:`DoctorReport` (``tfplace.doctor._report``):
``diagnose()`` is this machine's report as ``tfplace doctor`` prints it (``print(report)``),
``diagnose(inv)`` the report for any inventory. Its ``to_dict`` is the ``--json`` document built
from the inventory's and the plan's own ``to_dict``. The compute-capability thresholds the
rules use are shared with ``configure_precision`` (``tfplace._decide.precision``). Printing
happens in ``__main__``.

Example:
    >>> from tfplace.testing import fake_inventory
    >>> report = diagnose(fake_inventory(platform="win32"))
    >>> [f.id for f in report.findings], report.exit_code
    (['B1', 'B2', 'G2'], 0)
"""

from __future__ import annotations

from tfplace.doctor._explain import explain_error
from tfplace.doctor._report import DoctorReport, diagnose
from tfplace.doctor._rules import Finding, findings

__all__ = ["DoctorReport", "Finding", "diagnose", "explain_error", "findings"]
