"""The workers' private network on Linux: a namespace with only a loopback interface.

TensorFlow's gRPC server always listens on every interface (``GrpcServer::Init`` binds
``0.0.0.0:<port>``, whatever host ``TF_CONFIG`` names), and its distributed runtime has no
authentication. The local launcher therefore runs its workers in one private network namespace
that has only a loopback interface (as root, or through an unprivileged user namespace); where
that is impossible the launch log warns.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from tfplace.errors import ClusterConfigError

__all__ = ["NETWORKS", "PrivateNetwork", "choose_network", "is_loopback"]

log = logging.getLogger("tfplace")

# A process that creates the workers' network namespace (with only the loopback interface,
# brought up) and holds it open until its standard input closes. Run with ``python -I -S``.
_HOLDER = """
import ctypes, fcntl, os, socket, struct, sys
NEWNET, NEWUSER = 0x40000000, 0x10000000
try:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(NEWNET) != 0:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(NEWUSER | NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET), also with CLONE_NEWUSER")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # bring lo up
        ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifreq)[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
except Exception as err:
    print("FAIL", err, flush=True)
    sys.exit(0)
print("READY", flush=True)
sys.stdin.read()
"""

# Joins the holder's namespaces (argv[1] is its pid), then becomes the worker (exec: same pid).
_ENTER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = sys.argv[1]
for kind, flag in (("user", 0x10000000), ("net", 0x40000000)):
    if os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}"):
        continue
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
    if libc.setns(fd, flag) != 0:
        sys.exit(f"tfplace launch: cannot join the workers' {kind} namespace: "
                 + os.strerror(ctypes.get_errno()))
    os.close(fd)
os.execvp(sys.argv[2], sys.argv[2:])
"""

NETWORKS = ("auto", "private", "host")


class PrivateNetwork:
    """A network namespace that only the workers share, held by a small process."""

    def __init__(self, holder: subprocess.Popen[str]) -> None:
        self.holder = holder

    @classmethod
    def open(cls) -> PrivateNetwork | str:
        """The namespace, or why there cannot be one here."""
        if not sys.platform.startswith("linux"):
            return f"network namespaces are Linux-only (this is {sys.platform})"
        try:
            holder = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HOLDER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except OSError as err:
            return f"cannot start the namespace holder ({err})"
        assert holder.stdout is not None
        try:
            # The holder answers at once; a hung one must not hang the launch.
            ready, _, _ = select.select([holder.stdout], [], [], 10.0)
            first = holder.stdout.readline().strip() if ready else ""
        except BaseException:
            cls(holder).close()
            raise
        if first == "READY":
            return cls(holder)
        cls(holder).close()
        if not ready:
            return "the namespace holder did not answer within 10 s"
        return first.removeprefix("FAIL ") or "the namespace holder ended without a word"

    def wrap(self, command: Sequence[str], env: Mapping[str, str]) -> list[str]:
        # The worker's program is found here, as Popen would find it, so that a missing one
        # is still FileNotFoundError in the launcher and not a failing worker.
        program = command[0]
        if os.sep not in program:
            found = shutil.which(program, path=env.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        elif not os.access(program, os.X_OK):
            kind = errno.EACCES if os.path.exists(program) else errno.ENOENT
            raise (PermissionError if kind == errno.EACCES else FileNotFoundError)(
                kind, os.strerror(kind), program
            )
        return [sys.executable, "-I", "-S", "-c", _ENTER, str(self.holder.pid), *command]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.holder.stdin is not None:
                self.holder.stdin.close()
        try:
            self.holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        if self.holder.stdout is not None:
            self.holder.stdout.close()


def is_loopback(host: str) -> bool:
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def choose_network(network: str, host: str) -> PrivateNetwork | None:
    """The private namespace the workers will share, or None (with the reason logged)."""
    if network == "host":
        log.info("tfplace launch: network='host': the workers' ports are open on every interface")
        return None
    if not is_loopback(host):
        if network == "private":
            raise ClusterConfigError(
                f"launch: network='private' needs a loopback host, found {host!r}. "
                "Fix: use host='127.0.0.1' (or '::1'), or network='host'"
            )
        log.info(
            "tfplace launch: host %r is not a loopback address: the workers use this "
            "machine's network and listen on every interface",
            host,
        )
        return None
    opened = PrivateNetwork.open()
    if isinstance(opened, str):
        if network == "private":
            raise ClusterConfigError(
                f"launch: network='private': expected a private network namespace, found "
                f"none can be made here ({opened}). Fix: run as root or allow unprivileged "
                "user namespaces (kernel.unprivileged_userns_clone=1), or use network='auto'"
            )
        log.warning(
            "tfplace launch: the workers' TensorFlow servers listen on every network "
            "interface and could not be isolated (%s): anyone who can reach this machine can "
            "connect to them, and TensorFlow's runtime has no authentication. Run on a "
            "trusted network or behind a firewall (docs: multi-worker.md, 'Network exposure')",
            opened,
        )
        return None
    log.info(
        "tfplace launch: the workers share a private network namespace (loopback only): "
        "unreachable from outside this machine, and without outbound network access; "
        "network='host' keeps the machine's network"
    )
    return opened
