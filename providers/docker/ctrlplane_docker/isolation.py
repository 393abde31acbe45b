"""How a tenant's container is confined on a shared engine: what ``create_host_config`` always gets.

* **No new privileges** (``no-new-privileges:true``): setuid binaries and file capabilities cannot
  raise a process's privileges (``NoNewPrivs: 1`` in ``/proc/self/status``).
* **Capabilities**: all dropped, then ``CAPABILITIES`` added back: what ordinary images need to
  start as root and drop to their own user (``CHOWN``, ``DAC_OVERRIDE``, ``FOWNER``, ``FSETID``,
  ``SETUID``, ``SETGID``), signal their own children (``KILL``) and bind ports below 1024
  (``NET_BIND_SERVICE``). Not ``NET_RAW`` (raw sockets: spoofed packets, ARP games on the tenant
  network), not ``MKNOD``, ``SETPCAP``, ``SETFCAP``, ``SYS_CHROOT`` or ``AUDIT_WRITE`` of Docker's
  default set, and never any ``SYS_*`` or ``NET_ADMIN``.
* **Seccomp**: Docker's default profile stays on (no ``seccomp=unconfined`` is ever passed).
* **Pids limit** (``CTRLPLANE_DOCKER_PIDS_LIMIT``, default 512): a fork bomb exhausts its own
  container's limit, not the host's process table.
* **Ulimits**: open files 16 384 (soft and hard: under the hard limit of any engine seen, far
  above what one replica needs), no core dumps (a core holds the process's secrets and fills the
  disk).
* **Never from a spec**: privileged mode, host mounts (only ctrlplane's own named volumes are
  mounted), the host's network, PID or IPC namespace, devices, or the Docker socket. A spec has
  no field that could ask for them, and ``hardened`` sets the safe value of each explicitly.
* **Read-only root filesystem**: ``read_only`` when an instance asks for it, with a private
  ``/tmp`` (tmpfs, ``nosuid,nodev``) so that ordinary programs still run.
"""

from __future__ import annotations

from typing import Any

from docker.types import Ulimit  # type: ignore[import-untyped, unused-ignore]

CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID")
DEFAULT_PIDS_LIMIT = 512
NOFILE_LIMIT = 16384
SECURITY_OPTIONS = ("no-new-privileges:true",)
TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m"}


def hardened(*, pids_limit: int, read_only: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``APIClient.create_host_config`` every replica gets."""
    options: dict[str, Any] = {
        "cap_drop": ["ALL"],
        "cap_add": list(CAPABILITIES),
        "security_opt": list(SECURITY_OPTIONS),
        "pids_limit": pids_limit,
        "ulimits": [Ulimit(name="nofile", soft=NOFILE_LIMIT, hard=NOFILE_LIMIT), Ulimit(name="core", soft=0, hard=0)],
        "privileged": False,
        "ipc_mode": "private",
        "read_only": read_only,
    }
    if read_only:
        options["tmpfs"] = dict(TMPFS)
    return options
