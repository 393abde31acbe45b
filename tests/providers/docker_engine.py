"""The Docker engine for the provider tests, and the test image, built here with no registry.

The image ``ctrlplane-test/busybox:1`` is a rootfs made in Python: Debian's static busybox (package
``busybox-static``) as ``/bin/busybox``, its applets as symlinks, and ``/www/index.html`` holding
``INDEX_BODY``; it is imported through the engine's import API and runs busybox ``httpd`` on port
8080 under ``/www``. Build it (no-op when the current version is there) with:

    python -m tests.providers.docker_engine build-image

The ``docker_engine`` session fixture connects to ``DOCKER_HOST`` or the default socket. With no
engine it skips the Docker tests, or fails them when ``CI`` is set: CI must run them.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import struct
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
from docker import DockerClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

try:
    import pytest
except ModuleNotFoundError:  # `make run` installs no test tools, and `build-image` (the README's) needs none
    pytest = None  # type: ignore[assignment]

IMAGE = "ctrlplane-test/busybox:1"
HTTP_PORT = 8080
INDEX_BODY = b"ctrlplane test app: hello from busybox httpd\n"
IMAGE_VERSION = "4"
"""Bumped whenever the rootfs changes, so an older image of the same tag is rebuilt."""
VERSION_LABEL = "org.ctrlplane.test-image-version"
BUSYBOX = Path(os.environ.get("CTRLPLANE_TEST_BUSYBOX", "/bin/busybox"))
APPLETS = (
    "sh", "httpd", "wget", "echo", "cat", "sleep", "env", "nc", "ls",
    "stat", "kill", "head", "tr", "id", "true", "false", "mkdir", "ip", "hostname", "timeout",
)  # fmt: skip
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PT_INTERP = 3


class ImageBuildError(RuntimeError):
    """The test image cannot be built on this machine."""


def _is_static_elf(binary: bytes) -> bool:
    """True when the ELF binary asks for no dynamic loader (has no PT_INTERP program header)."""
    if binary[:4] != b"\x7fELF":
        return False
    wide, order = binary[4] == 2, "<" if binary[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", binary, 0x20)
        entry_size, count = struct.unpack_from(order + "HH", binary, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", binary, 0x1C)
        entry_size, count = struct.unpack_from(order + "HH", binary, 0x2A)
    types = (struct.unpack_from(order + "I", binary, phoff + i * entry_size)[0] for i in range(count))
    return PT_INTERP not in types


def busybox_binary() -> bytes:
    if not BUSYBOX.is_file():
        raise ImageBuildError(
            f"{BUSYBOX} is missing: install Debian's busybox-static (`apt-get install busybox-static`) "
            "or point CTRLPLANE_TEST_BUSYBOX at a static busybox"
        )
    binary = BUSYBOX.read_bytes()
    if not _is_static_elf(binary):
        raise ImageBuildError(
            f"{BUSYBOX} is dynamically linked and cannot run alone in an image: install Debian's "
            "busybox-static (`apt-get install busybox-static`), which replaces it with a static build"
        )
    return binary


def rootfs_tar(extra_files: dict[str, bytes] | None = None, extra_applets: tuple[str, ...] = ()) -> bytes:
    """The test image's whole filesystem as an uncompressed tar (plus files and applets to add)."""
    now = int(time.time())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(
            name: str, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o755, data: bytes = b"", link: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, now, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for directory in ("bin", "www", "etc", "proc", "sys", "dev", "run"):
            add(directory, kind=tarfile.DIRTYPE)
        add("tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        add("www/cgi-bin", kind=tarfile.DIRTYPE)
        add("www/cgi-bin/slow", data=SLOW_CGI)
        add("bin/busybox", data=busybox_binary())
        for applet in (*APPLETS, *extra_applets):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
        for name, data in (extra_files or {}).items():
            add(name, mode=0o644, data=data)
        add("www/index.html", mode=0o644, data=INDEX_BODY)
        add("etc/passwd", mode=0o644, data=b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add("etc/group", mode=0o644, data=b"root:x:0:\nnogroup:x:65534:\n")
    return buffer.getvalue()


SLOW_CGI = b'#!/bin/sh\nsleep 1\necho "Content-Type: text/plain"\necho\necho slow\n'
"""``/cgi-bin/slow``: answers a second after the request, so a request's whole body has reached the
app (and the router read it) by then; a plain POST to busybox httpd is answered unread."""

SERVES = [f"EXPOSE {HTTP_PORT}/tcp", "ENV PATH=/bin"]
"""The image changes of every test image that serves HTTP."""


def ensure_image(client: DockerClient) -> str:
    """Build and tag the test image unless this version of it is already there; its name."""
    import_once(
        client,
        IMAGE,
        rootfs_tar,
        [f'CMD ["/bin/httpd", "-f", "-v", "-p", "{HTTP_PORT}", "-h", "/www"]', *SERVES],
    )
    return IMAGE


def import_once(
    client: DockerClient, image: str, rootfs: Callable[[], bytes], changes: list[str], version: str = IMAGE_VERSION
) -> None:
    """Import ``image`` unless this ``version`` of it is there already (bump the version when what
    goes into the image changes). Importing again would move the
    tag off the image that running containers use (a test checking a replica's image would then
    never see it), so xdist workers take a lock and look again before they import."""

    def current() -> bool:
        try:
            return (client.images.get(image).labels or {}).get(VERSION_LABEL) == version
        except ImageNotFound:
            return False

    if current():
        return
    with open(Path(tempfile.gettempdir()) / "ctrlplane-test-images.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():
            return
        repository, tag = image.rsplit(":", 1)
        client.api.import_image_from_data(
            rootfs(), repository=repository, tag=tag, changes=[*changes, f"LABEL {VERSION_LABEL}={version}"]
        )


V2_IMAGE = "ctrlplane-test/busybox:v2"
BROKEN_IMAGE = "ctrlplane-test/busybox:broken"
V2_BODY = b"ctrlplane v2\n"


def ensure_variant_images(client: DockerClient) -> None:
    """The test image again, serving another body (v2) or exiting at once (broken): for deploys."""
    commands = {
        V2_IMAGE: 'CMD ["/bin/sh", "-c", "echo ctrlplane v2 > /tmp/index.html && '
        f'exec httpd -f -p {HTTP_PORT} -h /tmp"]',
        BROKEN_IMAGE: 'CMD ["/bin/sh", "-c", "exit 3"]',
    }
    for image, command in commands.items():
        import_once(client, image, rootfs_tar, [command, "ENV PATH=/bin"])


HEALTH_IMAGE = "ctrlplane-test/busybox:health"
SICK_IMAGE = "ctrlplane-test/busybox:health-sick"
HEALTH_FILE = "/www/healthz"
IMAGE_MARKER = "/etc/ctrlplane-test-image-marker"
IMAGE_MARKER_BODY = b"only inside the ctrlplane health test image\n"


def ensure_health_images(client: DockerClient) -> None:
    """Images for health checks: the test app plus ``/www/healthz`` (served as /healthz), a file
    only the image has (``IMAGE_MARKER``) and ``rm``/``test``; the "sick" one removes its health
    file before serving, so its http and command checks fail while it runs."""
    serve = f"exec httpd -f -p {HTTP_PORT} -h /www"
    commands = {
        HEALTH_IMAGE: f'CMD ["/bin/sh", "-c", "{serve}"]',
        SICK_IMAGE: f'CMD ["/bin/sh", "-c", "rm {HEALTH_FILE} && {serve}"]',
    }
    files = {HEALTH_FILE.lstrip("/"): b"ok\n", IMAGE_MARKER.lstrip("/"): IMAGE_MARKER_BODY}
    for image, command in commands.items():
        import_once(
            client,
            image,
            lambda: rootfs_tar(files, ("rm", "test")),
            [command, f"EXPOSE {HTTP_PORT}/tcp", "ENV PATH=/bin"],
        )


def remove_cluster(engine: DockerClient, cluster_name: str) -> None:
    """Remove every container, volume and network of one installation (``CTRLPLANE_CLUSTER_NAME``)."""
    label = f"ctrlplane.cluster={cluster_name}"
    for container in engine.containers.list(all=True, ignore_removed=True, filters={"label": label}):
        with contextlib.suppress(NotFound, APIError):
            container.remove(force=True, v=True)
    for volume in engine.volumes.list(filters={"label": label}):
        with contextlib.suppress(NotFound, APIError):
            volume.remove(force=True)
    for network in engine.networks.list(filters={"label": label}):
        with contextlib.suppress(NotFound, APIError):
            network.remove()


def connect() -> DockerClient:
    client = docker.from_env(timeout=30)
    client.ping()
    return client


def docker_engine() -> Iterator[DockerClient]:
    """A client of the engine the provider tests run against, with the test image built."""
    try:
        client = connect()
    except (DockerException, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if IN_CI:
            pytest.fail(f"CI requires a Docker engine: {reason}", pytrace=False)
        pytest.skip(f"no Docker engine: start dockerd (see README) or set DOCKER_HOST ({reason})")
    try:
        ensure_image(client)
    except ImageBuildError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()


if pytest is not None:
    docker_engine = pytest.fixture(scope="session")(docker_engine)


def main(argv: list[str]) -> int:
    if argv != ["build-image"]:
        print("usage: python -m tests.providers.docker_engine build-image", file=sys.stderr)
        return 2
    try:
        print(ensure_image(connect()))
    except (DockerException, OSError, ImageBuildError) as exc:
        print(f"cannot build {IMAGE}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


ISOLATION_IMAGE = "ctrlplane-test/busybox:isolation"


def ensure_isolation_image(client: DockerClient) -> str:
    """The test app plus ``ping`` (a raw ICMP socket: refused without ``NET_RAW``), for the tests
    that prove a replica's confinement from inside it."""
    import_once(
        client,
        ISOLATION_IMAGE,
        lambda: rootfs_tar(None, ("ping",)),
        [f'CMD ["/bin/httpd", "-f", "-p", "{HTTP_PORT}", "-h", "/www"]', *SERVES],
    )
    return ISOLATION_IMAGE
