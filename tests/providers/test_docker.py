"""The Docker provider against a real engine: the conformance suite, plus what only Docker shows
(``docker inspect``, networks, the kernel's OOM killer, mounts). Needs an engine: see
``docker_engine``. Every container is removed afterwards by the ``workloads`` fixture."""

from __future__ import annotations

import base64
import shlex
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from functools import cache
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from ctrlplane_docker import DockerProvider
from ctrlplane_docker.isolation import CAPABILITIES, DEFAULT_PIDS_LIMIT, NOFILE_LIMIT
from ctrlplane_docker.logs import THREAD_PREFIX
from ctrlplane_docker.settings import DockerSettings
from docker import DockerClient

from ctrlplane.provisioning.contract import PortSpec, Provider, ProviderSettings, RegistryAuth, Resources, SecretFile
from ctrlplane.provisioning.errors import PULL_FAILURES, ImageNotFound, ProviderError, ProviderUnavailable
from tests.providers.conformance import SESSION, AppImage, ProviderConformance, Workloads, new_id
from tests.providers.docker_engine import (
    HTTP_PORT,
    IMAGE,
    INDEX_BODY,
    connect,
    docker_engine,
    ensure_isolation_image,
)
from tests.providers.fake_registry import BasicAuthRegistry
from tests.waiting import eventually

pytestmark = pytest.mark.docker

__all__ = ["docker_engine"]

MIB = 1024 * 1024
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
STOP_TIMEOUT = 2
TEST_CLUSTER = f"test-providers-{uuid.uuid4().hex[:8]}"
"""This session's cluster: no reconciler of a parallel API test lists (or reaps) these objects."""


@cache
def engine() -> DockerClient:
    return connect()


async def inspect(name: str) -> dict[str, Any]:
    return dict(await anyio.to_thread.run_sync(lambda: engine().api.inspect_container(name)))


async def replica_name(provider: Provider, instance_id: str, replica: int) -> str:
    status = await provider.status(instance_id)
    return next(r.name for r in status.replicas if r.replica == replica)


async def ip_address(provider: Provider, instance_id: str, tenant_id: str, replica: int = 0) -> str:
    attrs = await inspect(await replica_name(provider, instance_id, replica))
    return str(attrs["NetworkSettings"]["Networks"][f"cp-tenant-{tenant_id}"]["IPAddress"])


class TestDockerProvider(ProviderConformance):
    @pytest.fixture
    async def provider(self, docker_engine: DockerClient) -> AsyncIterator[Provider]:
        provider = DockerProvider(ProviderSettings(cluster_name=TEST_CLUSTER), stop_timeout=STOP_TIMEOUT)
        yield provider
        await provider.close()

    @pytest.fixture
    async def unavailable_provider(self, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Provider]:
        monkeypatch.setenv("DOCKER_HOST", f"unix:///tmp/ctrlplane-no-engine-{uuid.uuid4().hex[:8]}.sock")
        provider = DockerProvider(ProviderSettings(cluster_name=TEST_CLUSTER))
        yield provider
        await provider.close()

    @pytest.fixture
    def image(self, docker_engine: DockerClient) -> AppImage:
        return AppImage(IMAGE, HTTP_PORT)

    @pytest.fixture
    def missing_image(self) -> str:
        return f"ctrlplane-test/{new_id('absent')}:1"

    async def crash(self, provider: Provider, instance_id: str, replica: int) -> int:
        """``docker kill``: SIGKILL from outside ctrlplane, exit code 128 + 9."""
        name = await replica_name(provider, instance_id, replica)
        await anyio.to_thread.run_sync(lambda: engine().api.kill(name, signal="SIGKILL"))
        return 137

    async def remove_replica(self, provider: Provider, instance_id: str, replica: int) -> None:
        name = await replica_name(provider, instance_id, replica)
        await anyio.to_thread.run_sync(lambda: engine().api.remove_container(name, force=True))

    async def limits(self, provider: Provider, instance_id: str) -> list[Resources]:
        status = await provider.status(instance_id)
        found: list[Resources] = []
        for replica in status.replicas:
            host = (await inspect(replica.name))["HostConfig"]
            found.append(Resources(cpu_millis=host["NanoCpus"] // 1_000_000, memory_mb=host["Memory"] // MIB))
        return found

    async def write_log(self, provider: Provider, instance_id: str, message: str) -> None:
        # PID 1's stdout is the container's stdout, which the engine logs.
        result = await provider.exec(instance_id, ["sh", "-c", f"echo {shlex.quote(message)} > /proc/1/fd/1"])
        assert result.exit_code == 0, result.output

    # -- Docker only -----------------------------------------------------------------------------

    async def test_a_replica_is_confined_as_seen_from_inside_it(self, provider: Provider, workloads: Workloads) -> None:
        image = await anyio.to_thread.run_sync(ensure_isolation_image, engine())
        spec = workloads.spec(image=image)
        status = await provider.provision(spec)
        host = (await inspect(status.replicas[0].name))["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert set(host["CapAdd"]) == set(CAPABILITIES) and "NET_RAW" not in host["CapAdd"]
        assert host["Privileged"] is False and host["NetworkMode"] != "host" and host["PidMode"] == ""
        assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert not any("unconfined" in option for option in host["SecurityOpt"])
        assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {"nofile": NOFILE_LIMIT, "core": 0}
        assert not host["Binds"] and not host["Devices"]
        seen = await provider.exec(spec.instance_id, ["cat", "/proc/self/status"])
        fields = {k: v.strip() for k, _, v in (line.partition(":") for line in seen.output.splitlines())}
        assert fields["NoNewPrivs"] == "1"
        assert fields["Seccomp"] == "2", "Docker's default seccomp profile filters system calls"
        assert not int(fields["CapEff"], 16) & (1 << CAP_NET_RAW)
        assert not int(fields["CapBnd"], 16) & (1 << CAP_SYS_ADMIN)
        ping = await provider.exec(spec.instance_id, ["ping", "-c", "1", "-W", "1", "127.0.0.1"])
        assert ping.exit_code != 0 and "permission denied" in ping.output, ping.output
        socket = await provider.exec(spec.instance_id, ["ls", "/var/run/docker.sock", "/run/docker.sock"])
        assert socket.exit_code != 0, "the Docker socket is never inside a replica"

    async def test_a_read_only_root_filesystem_refuses_writes_but_tmp_is_writable(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(read_only_root_fs=True)
        status = await provider.provision(spec)
        host = (await inspect(status.replicas[0].name))["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        root = await provider.exec(spec.instance_id, ["sh", "-c", "echo x > /written && echo wrote"])
        assert root.exit_code != 0 and "Read-only file system" in root.output, root.output
        tmp = await provider.exec(spec.instance_id, ["sh", "-c", "echo x > /tmp/written && cat /tmp/written"])
        assert (tmp.exit_code, tmp.output.strip()) == (0, "x"), tmp.output
        writable = workloads.spec()
        await provider.provision(writable)
        default = await provider.exec(writable.instance_id, ["sh", "-c", "echo x > /written && echo wrote"])
        assert (default.exit_code, default.output.strip()) == (0, "wrote"), "the default stays writable"

    async def test_a_fork_bomb_stops_at_the_pids_limit_while_neighbours_keep_serving(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        limited = DockerProvider(
            ProviderSettings(cluster_name=TEST_CLUSTER), docker=DockerSettings(pids_limit=64), stop_timeout=STOP_TIMEOUT
        )
        try:
            neighbour = await provider.provision(workloads.spec())
            bomb = workloads.spec()
            await limited.provision(bomb)
            forked = await limited.exec(
                bomb.instance_id,
                ["sh", "-c", "i=0; while [ $i -lt 300 ]; do sleep 120 & i=$((i+1)); done; echo done"],
                timeout=60,
            )
            assert "can't fork" in forked.output, forked.output[-500:]
            name = await replica_name(limited, bomb.instance_id, 0)
            processes = await anyio.to_thread.run_sync(lambda: engine().api.top(name)["Processes"])
            assert 32 < len(processes) <= 64
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(neighbour.endpoints[0].url)
            assert response.status_code == 200 and response.content == INDEX_BODY
            assert (await provider.ping()).available, "the engine keeps answering"
        finally:
            await limited.close()

    async def test_limits_show_in_docker_inspect_after_provision_and_scale(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(resources=Resources(cpu_millis=250, memory_mb=64))
        status = await provider.provision(spec)
        host = (await inspect(status.replicas[0].name))["HostConfig"]
        assert (host["NanoCpus"], host["Memory"], host["MemorySwap"]) == (250_000_000, 64 * MIB, 64 * MIB)
        await provider.scale(workloads.again(spec, resources=Resources(cpu_millis=1500, memory_mb=128)))
        host = (await inspect(status.replicas[0].name))["HostConfig"]
        assert (host["NanoCpus"], host["Memory"], host["MemorySwap"]) == (1_500_000_000, 128 * MIB, 128 * MIB)

    async def test_an_endpoint_answers_http_with_the_apps_body(self, provider: Provider, workloads: Workloads) -> None:
        status = await provider.provision(workloads.spec())
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(status.endpoints[0].url)
        assert response.status_code == 200
        assert response.content == INDEX_BODY

    async def test_containers_carry_names_labels_env_ports_and_no_restart_policy(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(
            ports=(PortSpec(HTTP_PORT), PortSpec(5353, "udp")),
            env={"GREETING": "hello", "MODE": "test"},
            labels={"team": "a", "ctrlplane.tenant": "ten_spoofed"},
            release_id="rel_1",
        )
        status = await provider.provision(spec)
        assert status.replicas[0].name == f"cp-{spec.instance_id}-g1-r0"
        attrs = await inspect(status.replicas[0].name)
        labels = attrs["Config"]["Labels"]
        assert {key: labels[key] for key in labels if key.startswith("ctrlplane.") or key == "team"} == {
            "team": "a",
            "ctrlplane.managed": "true",
            "ctrlplane.cluster": TEST_CLUSTER,
            "ctrlplane.instance": spec.instance_id,
            "ctrlplane.tenant": spec.tenant_id,
            "ctrlplane.release": "rel_1",
            "ctrlplane.generation": "1",
            "ctrlplane.replica": "0",
            "ctrlplane.purpose": "replica",
        }
        assert {"GREETING=hello", "MODE=test"} <= set(attrs["Config"]["Env"])
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
        assert list(attrs["NetworkSettings"]["Networks"]) == [f"cp-tenant-{spec.tenant_id}"]
        bindings = attrs["HostConfig"]["PortBindings"]
        assert {key: [b["HostIp"] for b in value] for key, value in bindings.items()} == {
            "8080/tcp": ["127.0.0.1"],
            "5353/udp": ["127.0.0.1"],
        }
        urls = sorted(endpoint.url.split(":")[0] for endpoint in status.endpoints)
        assert urls == ["http", "udp"]

    async def test_tenants_cannot_reach_each_other_but_one_tenants_replicas_can(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        tenant_a, tenant_b = new_id("ten"), new_id("ten")
        a = workloads.spec(tenant_id=tenant_a, replicas=2)
        b = workloads.spec(tenant_id=tenant_b)
        await provider.provision(a)
        await provider.provision(b)
        same_tenant = await ip_address(provider, a.instance_id, tenant_a, replica=1)
        other_tenant = await ip_address(provider, b.instance_id, tenant_b)

        def fetch(ip: str) -> list[str]:
            # busybox 1.35's wget crashes with -T, so the time limit comes from timeout(1).
            return ["timeout", "2", "wget", "-q", "-O", "-", f"http://{ip}:{HTTP_PORT}/"]

        reached = await provider.exec(a.instance_id, fetch(same_tenant))
        assert (reached.exit_code, reached.output) == (0, INDEX_BODY.decode())
        blocked = await provider.exec(a.instance_id, fetch(other_tenant), timeout=8)
        assert blocked.exit_code != 0
        assert INDEX_BODY.decode() not in blocked.output

    async def test_an_oom_killed_replica_is_reported_as_such(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec(
            resources=Resources(cpu_millis=250, memory_mb=16),
            ports=(),
            command=("sh", "-c", "x=$(head -c 50000000 /dev/zero | tr '\\0' a); sleep 60"),
        )
        await provider.provision(spec)

        # Docker sets OOMKilled from containerd's OOM event, which it can handle just after the exit
        # (CI once saw the exited replica, exit code 137, before the flag): the first failed status
        # the provider gives must already say OOM-killed (it waits for the flag to settle)
        async def failed() -> Any:
            status = await provider.status(spec.instance_id)
            return status if status.state == "failed" else None

        status = await eventually(failed, "the replica failed", timeout=30)
        assert status.replicas[0].oom_killed
        assert status.replicas[0].exit_code == 137
        assert "OOM" in status.message

    async def test_files_are_mounted_read_only_with_mode_0400(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec(
            files=(SecretFile("/etc/app/db-password", b"s3cret\n"), SecretFile("/run/secrets/token", b"tok-1"))
        )
        await provider.provision(spec)
        paths = ["/etc/app/db-password", "/run/secrets/token"]
        listed = await provider.exec(spec.instance_id, ["stat", "-c", "%a %u %n", *paths])
        assert listed.output.splitlines() == ["400 0 /etc/app/db-password", "400 0 /run/secrets/token"]
        content = await provider.exec(spec.instance_id, ["cat", *paths])
        assert content.output == "s3cret\ntok-1"
        write = await provider.exec(spec.instance_id, ["sh", "-c", "echo stolen > /etc/app/db-password"])
        assert write.exit_code != 0 and "Read-only" in write.output
        deployed = await provider.deploy(
            workloads.again(spec, generation=2, files=(SecretFile("/etc/app/db-password", b"rotated\n"),)), "recreate"
        )
        assert deployed.state == "running", deployed.message
        rotated = await provider.exec(spec.instance_id, ["cat", "/etc/app/db-password"])
        assert rotated.output == "rotated\n"
        volumes = [
            i.name for i in await provider.inventory() if i.kind == "volume" and i.instance_id == spec.instance_id
        ]
        assert volumes == [f"cp-{spec.instance_id}-g2-files"]

    async def test_follow_releases_its_threads_when_closed_early(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        status = await provider.provision(spec)
        await self.write_log(provider, spec.instance_id, "one line")
        followed = provider.logs(spec.instance_id, follow=True)
        with anyio.fail_after(10):
            first = await anext(followed)
        assert first.message == "one line"

        def pumps() -> list[threading.Thread]:
            return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and spec.instance_id in t.name]

        assert len(pumps()) == 2 * len(status.replicas)
        assert isinstance(followed, AsyncGenerator)
        await followed.aclose()

        async def ended() -> bool:
            return not pumps()

        await eventually(ended, timeout=5)

    async def test_exec_past_its_timeout_is_a_provider_error(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        with anyio.fail_after(5), pytest.raises(ProviderError, match="did not finish within"):
            await provider.exec(spec.instance_id, ["sleep", "30"], timeout=0.5)

    async def test_a_failed_pull_is_image_not_found_with_a_classified_message_not_the_engines_text(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        # A registry on a closed loopback port: the pull fails at once and sends nothing off this host.
        # The engine's own text ("dial tcp ... connection refused") would tell a port's state.
        image = f"127.0.0.1:9/ctrlplane-test/{new_id('absent')}:1"
        spec = workloads.spec(image=image, pull_policy="IfNotPresent")
        with pytest.raises(ImageNotFound) as raised:
            await provider.provision(spec)
        assert raised.value.message == f"image {image!r} could not be pulled: {PULL_FAILURES['unreachable']}"
        assert raised.value.details == {"image": image, "reason": "unreachable"}
        assert "refused" not in raised.value.message and "dial" not in raised.value.message

    async def test_a_pull_sends_the_tenants_registry_credentials_and_reports_no_engine_text(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        # A registry on loopback (the engine treats 127.0.0.0/8 as an insecure, plain-HTTP registry)
        # that demands Basic auth, records what arrives and then has no such image.
        with BasicAuthRegistry() as registry:
            image = f"127.0.0.1:{registry.port}/private/{new_id('app')}:1"
            auth = RegistryAuth(registry=f"127.0.0.1:{registry.port}", username="robot", password="pull-s3cret-9x")
            spec = workloads.spec(image=image, pull_policy="Always", registry_auth=auth)
            with pytest.raises(ImageNotFound) as raised:
                await provider.provision(spec)
        expected = "Basic " + base64.b64encode(b"robot:pull-s3cret-9x").decode()
        assert expected in registry.authorizations, registry.authorizations
        assert any(path.startswith("/v2/private/") for path in registry.authorized_paths), registry.authorized_paths
        shown = raised.value.message + repr(raised.value.details)
        assert "pull-s3cret-9x" not in shown and "robot" not in shown
        assert raised.value.message.startswith(f"image {image!r} could not be pulled: ")
        assert "pull-s3cret-9x" not in repr(spec)

    async def test_start_reattaches_a_replica_whose_tenant_network_was_removed(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        await provider.stop(spec.instance_id)
        await anyio.to_thread.run_sync(lambda: engine().networks.get(f"cp-tenant-{spec.tenant_id}").remove())
        status = await provider.start(spec.instance_id)
        assert status.state == "running", status.message
        async with httpx.AsyncClient(timeout=5) as client:

            async def body() -> bytes | None:
                try:
                    return (await client.get(status.endpoints[0].url)).content
                except httpx.TransportError:  # the restarted httpd is not listening yet
                    return None

            assert await eventually(body, "the reattached replica answers") == INDEX_BODY

    async def test_an_unreachable_engine_says_so(self, unavailable_provider: Provider) -> None:
        with pytest.raises(ProviderUnavailable, match=r"^Docker engine unreachable: "):
            await unavailable_provider.status(new_id("inst"))


@pytest.fixture(autouse=True, scope="module")
def _no_containers_left_behind() -> Iterator[None]:
    """After the module, nothing this suite created may remain on the engine."""
    yield
    try:
        client = engine()
    except Exception:  # noqa: BLE001 - no engine: the tests were skipped and created nothing
        return
    leftover = [  # ignore_removed: another worker's test may remove its containers meanwhile
        c.name
        for c in client.containers.list(all=True, ignore_removed=True, filters={"label": "ctrlplane.managed=true"})
        if (c.labels.get("ctrlplane.instance") or "").startswith(f"inst_{SESSION}")
    ]
    assert leftover == [], f"containers left behind: {leftover}"
