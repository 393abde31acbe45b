"""Secret files (``WorkloadSpec.files``): read-only, mode 0400, never in an image.

Why not the obvious tmpfs: Docker sets a tmpfs mount up only when the container starts, and the
archive API (``put_archive``) writes beneath it, into the container's layer, where the started
container never sees it (``docker cp`` documents that it cannot reach tmpfs mounts). A volume
backed by tmpfs loses its content each time the engine unmounts it, which it does right after an
archive call on a container that is not running. Writing into the container's own layer works but
leaves the file writable and lets ``docker commit`` copy it into an image.

What is done instead, per instance generation:

1. A named local volume ``cp-{instance}-g{generation}-files`` (labelled) is created.
2. A loader container that is created but **never started** (no process ever runs in it, no network)
   mounts the volume read-write; ``put_archive`` writes one tar of the files into it, each entry
   ``f{index}``, owned by root, mode 0400. The loader is removed at once.
3. Every replica mounts the whole volume read-only at ``/run/ctrlplane/files`` (which also makes
   the engine count the volume as in use, so ``docker volume prune`` cannot pull it from under
   running replicas) and each file read-only at its own ``path``, bound from the volume's
   mountpoint on the engine host.

The plaintext thus lives only in the volume, on the engine host's disk under the engine's data
root (``/var/lib/docker/volumes``, which only root can enter, and the files are root's, 0400), and
in the replicas' read-only mounts: never in an image, in a container layer or in a directory others
can read. It works for a remote engine too, every path being on the engine's side. Rewriting the
files (a retried call, a scale-up) replaces them whole, so running replicas keep reading the copy
they mounted. The volume goes with ``remove_generation``, ``deploy`` and ``deprovision``.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Sequence
from posixpath import normpath

from docker import APIClient  # type: ignore[import-untyped, unused-ignore]
from docker.errors import APIError  # type: ignore[import-untyped, unused-ignore]
from docker.types import Mount  # type: ignore[import-untyped, unused-ignore]

from ctrlplane.provisioning.contract import SecretFile, WorkloadSpec
from ctrlplane.provisioning.errors import ProviderError
from ctrlplane_docker.errors import is_conflict, is_not_found
from ctrlplane_docker.naming import FILES_DIR, files_loader_name, files_volume_name, generation_labels

LOADER_DIR = "/ctrlplane-files"
LOADER_WAIT_SECONDS = 5.0
FILE_MODE = 0o400


def entry_name(index: int) -> str:
    return f"f{index}"


def checked_paths(files: Sequence[SecretFile]) -> list[str]:
    """Absolute, normalised, distinct paths; anything else is refused before the engine sees it."""
    paths: list[str] = []
    for secret in files:
        path = normpath(secret.path)
        if not secret.path.startswith("/") or path in ("/", "//") or path.startswith(FILES_DIR):
            raise ProviderError(f"file path {secret.path!r} must be absolute, not / and not under {FILES_DIR}")
        if path in paths:
            raise ProviderError(f"file path {secret.path!r} is given twice")
        paths.append(path)
    return paths


def files_tar(files: Sequence[SecretFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index, secret in enumerate(files):
            info = tarfile.TarInfo(entry_name(index))
            info.size, info.mode, info.uid, info.gid = len(secret.content), FILE_MODE, 0, 0
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(secret.content))
    return buffer.getvalue()


def _create_loader(
    api: APIClient, spec: WorkloadSpec, generation: int, volume: str, cluster: str, name: str | None = None
) -> str:
    name = name or files_loader_name(spec.instance_id, generation)
    deadline = time.monotonic() + LOADER_WAIT_SECONDS
    cleared = False
    while True:
        try:
            created = api.create_container(
                spec.image,
                command=["ctrlplane-files-loader"],
                name=name,
                labels=generation_labels(spec, generation, cluster=cluster, purpose="files-loader"),
                network_disabled=True,
                host_config=api.create_host_config(mounts=[Mount(LOADER_DIR, volume, type="volume")]),
            )
            return str(created["Id"])
        except APIError as exc:
            if not is_conflict(exc):
                raise
        # A concurrent call is loading the same files and removes its loader within moments; one
        # still there past the wait was left by a process that died mid-load.
        if time.monotonic() >= deadline:
            if cleared:
                raise ProviderError(f"files loader {name} stays in the way; remove it and retry")
            with contextlib.suppress(APIError):
                api.remove_container(name, force=True)
            cleared = True
        time.sleep(0.05)


def load_files(
    api: APIClient,
    spec: WorkloadSpec,
    generation: int,
    cluster: str,
    *,
    own: tuple[str, str, dict[str, str]] | None = None,
) -> list[Mount]:
    """Write the spec's files into the generation's volume (or, with ``own``, into a volume of its
    own: its name, its loader's name and its labels, as a one-shot run has); return the mounts."""
    if not spec.files:
        return []
    paths = checked_paths(spec.files)
    if own is None:
        volume, loader = files_volume_name(spec.instance_id, generation), None
        labels = generation_labels(spec, generation, cluster=cluster, purpose="files")
    else:
        volume, loader, labels = own
    # Creating a volume that exists returns it: a retried call adopts the earlier one.
    mountpoint = str(api.create_volume(name=volume, driver="local", labels=labels)["Mountpoint"])
    loader_id = _create_loader(api, spec, generation, volume, cluster, loader)
    try:
        api.put_archive(loader_id, LOADER_DIR, files_tar(spec.files))
    finally:
        try:
            api.remove_container(loader_id, force=True)
        except APIError as exc:
            if not is_not_found(exc):
                raise
    mounts = [Mount(FILES_DIR, volume, type="volume", read_only=True)]
    mounts += [
        Mount(path, f"{mountpoint}/{entry_name(index)}", type="bind", read_only=True)
        for index, path in enumerate(paths)
    ]
    return mounts
