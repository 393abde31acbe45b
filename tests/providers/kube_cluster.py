"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (the node simulator), all on loopback, built by ``tools/kube/build.sh``.

One control plane per test run (``kube_control_plane``, session-scoped: under xdist the first worker
that needs it starts it and the others attach; tests share it and take a namespace each through the
provider's own tenant names), and one per process for tests that kill or restart its components
(``kube_private_control_plane``). Each start generates its own CA,
serving and client certificates and service-account key in a temporary directory, writes an admin
kubeconfig there, and stops every process at the end of the session.

kwok runs the pods: one fake node (``kwok.x-k8s.io/node=fake``) that the scheduler places pods
on; ``kwok-stages.yaml`` says what happens to them (running with a loopback IP, waiting with
``ErrImagePull`` for an image under ``missing.invalid/``, or, for a Job's pod labelled
``ctrlplane-test.exit-code``, ending with that exit code).

Locally, a missing build skips with the command that builds it; under ``CI=true`` it fails.
"""

from __future__ import annotations

import datetime
import fcntl
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes import config as kube_config

from tests.conftest import require_binary
from tests.ports import free_port  # below the ephemeral range: a restarted etcd or API server gets its port back

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tools" / "kube" / "build.sh"
STAGES = Path(__file__).with_name("kwok-stages.yaml")
NODE = "kwok-node-0"
POD_CIDR = "127.1.0.0/16"
"""kwok gives pods addresses from here: loopback, so a request to a pod's endpoint stays on this
machine (nothing listens there unless a test binds it)."""
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
START_SECONDS = 90.0
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "resourcequota-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
)


def binaries_dir() -> Path:
    """Where build.sh puts this Kubernetes version's binaries (``CTRLPLANE_KUBE_BIN`` overrides)."""
    override = os.environ.get("CTRLPLANE_KUBE_BIN")
    if override:
        return Path(override)
    return Path(
        subprocess.run(["bash", str(BUILD), "--print-dir"], check=True, capture_output=True, text=True).stdout.strip()
    )


# -- PKI ------------------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_pki(directory: Path) -> None:
    """ca.pem; apiserver.pem/-key.pem (127.0.0.1, localhost, kubernetes.default.svc); admin.pem/
    -key.pem (group system:masters); sa.pem/sa-key.pem (service-account token signing)."""
    now = datetime.datetime.now(datetime.UTC)
    before, after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctrlplane test kubernetes CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-key.pem").write_bytes(_pem_key(ca_key))

    def leaf(name: str, subject: x509.Name, usage: x509.ObjectIdentifier, alternatives: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alternatives:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}-key.pem").write_bytes(_pem_key(key))

    leaf(
        "apiserver",
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    leaf(
        "admin",
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "ctrlplane-test-admin"),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (directory / "sa-key.pem").write_bytes(_pem_key(sa_key))
    (directory / "sa.pem").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# -- the control plane ----------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """The running processes, their ports and the admin kubeconfig; see the module docstring."""

    directory: Path
    binaries: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def configuration(self) -> client.Configuration:
        """A client configuration from the kubeconfig (TLS with the test CA, the admin cert)."""
        config = client.Configuration()
        kube_config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=config)
        config.retries = 0
        return config

    def api(self) -> client.ApiClient:
        return client.ApiClient(self.configuration())

    # -- processes -------------------------------------------------------------------------------

    def command(self, name: str) -> list[str]:
        d, b = self.directory, self.binaries
        if name == "etcd":
            peer = f"http://127.0.0.1:{self.etcd_peer_port}"
            return [
                str(b / "etcd"),
                "--name=test",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--unsafe-no-fsync",  # a test cluster: durability across a power cut is not needed
                "--log-level=warn",
            ]
        if name == "kube-apiserver":
            return [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={d / 'apiserver.pem'}",
                f"--tls-private-key-file={d / 'apiserver-key.pem'}",
                f"--client-ca-file={d / 'ca.pem'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={d / 'sa.pem'}",
                f"--service-account-signing-key-file={d / 'sa-key.pem'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                # The endpoints of the `kubernetes` Service would be 127.0.0.1, which Endpoints refuse.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ]
        if name == "kube-controller-manager":
            return [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                f"--service-account-private-key-file={d / 'sa-key.pem'}",
                f"--root-ca-file={d / 'ca.pem'}",
                # What the tests rely on, and no more (CPU is scarce): no node-lifecycle controller,
                # so a fault test's paused heartbeats never taint the node or evict its pods.
                "--controllers=" + ",".join(CONTROLLERS),
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--concurrent-gc-syncs=20",
                "--profiling=false",
                "--v=1",
            ]
        if name == "kube-scheduler":
            return [
                str(b / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ]
        if name == "kwok":
            return [
                str(b / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--server-address=",
                "--node-lease-duration-seconds=0",
            ]
        raise ValueError(name)

    def start(self, name: str) -> None:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.processes[name] = subprocess.Popen(
            self.command(name), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def stop(self, name: str, *, kill: bool = False) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, name: str, *, kill: bool = False) -> None:
        self.stop(name, kill=kill)
        self.start(name)

    def stop_all(self) -> None:
        for name in reversed(COMPONENTS):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- readiness -------------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.directory / "ca.pem"))
        context.load_cert_chain(self.directory / "admin.pem", self.directory / "admin-key.pem")
        return context

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=self._tls(), timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def wait(self, what: str, check: Any, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            try:
                if check():
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the control plane's {what} not ready after {timeout}s:\n"
                    + "\n".join(f"--- {n}\n{self.log_tail(n, 10)}" for n in self.processes)
                )
            time.sleep(0.25)

    def api_ready(self) -> bool:
        status, _ = self.get("/readyz")
        return status == 200

    def wait_api(self, timeout: float = START_SECONDS) -> None:
        self.wait("API server", self.api_ready, timeout)

    def node_ready(self) -> bool:
        status, body = self.get(f"/api/v1/nodes/{NODE}")
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def default_service_account(self) -> bool:
        status, _ = self.get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    def write_kubeconfig(self) -> None:
        d = self.directory
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "test", "cluster": {"server": self.url, "certificate-authority": str(d / "ca.pem")}}
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {
                                "client-certificate": str(d / "admin.pem"),
                                "client-key": str(d / "admin-key.pem"),
                            },
                        }
                    ],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                    "current-context": "test",
                }
            )
        )

    def boot(self) -> None:
        write_pki(self.directory)
        self.write_kubeconfig()
        self.start("etcd")
        self.start("kube-apiserver")
        self.wait_api()
        for name in COMPONENTS[2:]:
            self.start(name)
        self.create_node()
        self.wait("node (kwok)", self.node_ready)
        self.untaint_node()
        self.wait("default service account (controller manager)", self.default_service_account)

    def untaint_node(self) -> None:
        """Node admission taints a new node ``not-ready``; the node-lifecycle controller (not run
        here) would lift it once kwok reports the node Ready."""
        with self.api() as api:
            client.CoreV1Api(api).patch_node(NODE, {"spec": {"taints": None}})

    def create_node(self) -> None:
        with self.api() as api:
            client.CoreV1Api(api).create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": NODE,
                        "annotations": {"kwok.x-k8s.io/node": "fake"},
                        "labels": {"kubernetes.io/hostname": NODE, "type": "kwok"},
                    },
                    "spec": {},
                }
            )


def require_build() -> Path:
    """The binaries' directory; skips (locally) or fails (CI) naming the build command."""
    directory = binaries_dir()
    for name in COMPONENTS:
        require_binary(str(directory / name), f"the Kubernetes tests (build it: bash {BUILD.relative_to(ROOT)})")
    return directory


_running: ControlPlane | None = None


def control_plane(config: pytest.Config) -> ControlPlane:
    """This process's own control plane, started on first use and stopped when the session ends."""
    global _running
    if _running is None:
        binaries = require_build()
        directory = Path(tempfile.mkdtemp(prefix="ctrlplane-kube-"))
        plane = ControlPlane(directory, binaries)

        def stop() -> None:
            plane.stop_all()
            shutil.rmtree(directory, ignore_errors=True)

        config.add_cleanup(stop)
        try:
            plane.boot()
        except BaseException:
            stop()
            raise
        _running = plane
    return _running


# -- one control plane for every xdist worker of a run ----------------------------------------------

_shared: ControlPlane | None = None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _terminate(pids: dict[str, int]) -> None:
    """Stop processes another worker may have started (so no ``Popen`` here): SIGTERM, then SIGKILL."""
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def shared_control_plane(config: pytest.Config) -> ControlPlane:
    """One control plane for every xdist worker of this run: the first worker that needs it starts it
    (under a file lock) and records it in a directory named by the run's ``testrunuid``; the others
    attach to it; the last worker to end its session stops it. Without xdist, this process's own.

    Tests on it must leave its processes alone (another worker's test is using it): a test that
    stops or restarts a component takes ``kube_private_control_plane``."""
    global _shared
    worker = getattr(config, "workerinput", None)
    if worker is None:
        return control_plane(config)
    if _shared is not None:
        return _shared
    binaries = require_build()
    root = Path(tempfile.gettempdir()) / f"ctrlplane-kube-run-{worker['testrunuid']}"
    root.mkdir(exist_ok=True)
    state_file, lock = root / "state.json", root / "lock"
    with _locked(lock):
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        if state is not None:
            plane = ControlPlane(
                Path(state["directory"]),
                binaries,
                etcd_port=state["etcd_port"],
                etcd_peer_port=state["etcd_peer_port"],
                api_port=state["api_port"],
            )
            if not all(_alive(pid) for pid in state["pids"].values()) or not plane.api_ready():
                state = None
        if state is None:
            plane = ControlPlane(Path(tempfile.mkdtemp(prefix="ctrlplane-kube-shared-")), binaries)
            try:
                plane.boot()
            except BaseException:
                plane.stop_all()
                shutil.rmtree(plane.directory, ignore_errors=True)
                raise
            state = {
                "directory": str(plane.directory),
                "etcd_port": plane.etcd_port,
                "etcd_peer_port": plane.etcd_peer_port,
                "api_port": plane.api_port,
                "pids": {name: process.pid for name, process in plane.processes.items()},
                "users": 0,
            }
        state["users"] += 1
        state_file.write_text(json.dumps(state))

    def leave() -> None:
        with _locked(lock):
            current = json.loads(state_file.read_text())
            current["users"] -= 1
            if current["users"] > 0:
                state_file.write_text(json.dumps(current))
                return
            if plane.processes:
                plane.stop_all()
            _terminate(current["pids"])
            shutil.rmtree(current["directory"], ignore_errors=True)
            # The directory and its lock stay: a worker may be taking the lock to start a new one.
            state_file.unlink()

    config.add_cleanup(leave)
    _shared = plane
    return plane


@pytest.fixture(scope="session")
def kube_control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """The control plane the Kubernetes tests share (across xdist workers); never stopped by a test."""
    yield shared_control_plane(request.config)


@pytest.fixture(scope="session")
def kube_private_control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """This process's own control plane, for tests that kill or restart its components."""
    yield control_plane(request.config)
