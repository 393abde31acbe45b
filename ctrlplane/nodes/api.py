"""Routes of nodes: the admins' ``/v1/admin/nodes...`` and the node API of seed 002.

The node routes are ``own_auth``: the request boundary passes them through (after reading the
body, with its size limit), and ``node_transaction`` authenticates the node credential, runs the
call in one transaction and appends its audit entry to the system chain, committed with the change;
a refused call is audited in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ctrlplane.audit.service import AuditRecord
from ctrlplane.audit.service import append as append_audit
from ctrlplane.errors import CtrlplaneError, ErrorBody, InvalidInput, NotFound, RateLimited
from ctrlplane.inputs import check_json_depth, decompress
from ctrlplane.nodes import contract, schemas, service
from ctrlplane.nodes.events import follow, page
from ctrlplane.nodes.service import AdminNodes, NodeCalls
from ctrlplane.ratelimit.service import BucketState
from ctrlplane.web.context import AppServices
from ctrlplane.web.http import ApiRequest, context_of, errors, route
from ctrlplane.web.openapi import EVENT_STREAM, RECORD_BATCH
from ctrlplane.web.pagination import Page
from ctrlplane.web.scope import RATE_LIMIT_KEY, request_id_for

MAX_EVENT_ID = 2**63 - 1
LastEventId = Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False, pattern=r"^[0-9]{1,19}$")]
NODE_SECURITY: list[dict[str, list[str]]] = [{"nodeCredential": []}]


def _request_id(request: Request[Any, Any, Any]) -> str:
    return request_id_for(request.scope)


def _client(request: Request[Any, Any, Any]) -> str | None:
    client = request.scope.get("client")
    return client[0] if client else None


async def _audit(
    session: Any,
    services: AppServices,
    request: Request[Any, Any, Any],
    *,
    node_id: str | None,
    action: str,
    status: int,
    details: dict[str, Any],
) -> None:
    outcome = "success" if status < 400 else ("denied" if status in (401, 403) else "rejected")
    record = AuditRecord(
        tenant_id=None,
        actor_kind="node" if node_id else "anonymous",
        actor_subject=node_id or "anonymous",
        action=action,
        resource="node",
        resource_id=node_id,
        outcome=outcome if status < 500 else "error",
        status_code=status,
        request_id=_request_id(request),
        client_addr=_client(request),
        details=details,
    )
    await append_audit(session, record, keys=services.audit_keys)


async def _audit_alone(services: AppServices, request: Request[Any, Any, Any], **fields: Any) -> None:
    async with services.db.write() as session, session.begin():
        await _audit(session, services, request, **fields)


async def _rate_limit(request: Request[Any, Any, Any], services: AppServices, key: str) -> None:
    """429 past the caller's bucket, before any transaction (the limiter may write its own rows);
    RateLimit-* headers on the answer either way."""
    if services.rate_limiter is None:
        return
    state: BucketState | None = None
    try:
        state = await services.rate_limiter.check_node(key)
    except RateLimited as exc:
        state = exc.rate_limit  # type: ignore[attr-defined]
        raise
    finally:
        request.scope[RATE_LIMIT_KEY] = state  # type: ignore[literal-required]


class Call:
    """What the handler of a node call fills in for its audit entry."""

    def __init__(self, calls: NodeCalls) -> None:
        self.calls = calls
        self.status = 200
        self.details: dict[str, Any] = {}


@asynccontextmanager
async def node_transaction(
    request: Request[Any, Any, Any], services: AppServices, node_id: str, action: str
) -> AsyncIterator[Call]:
    """Authenticate the node (401), check it is the path's node (another node's ID: 404), run the
    call in one transaction with its audit entry."""
    authenticated: str | None = None
    authorization = request.headers.get("authorization") or ""
    await _rate_limit(request, services, "node:" + service.digest(authorization)[:32])
    try:
        async with services.db.write() as session, session.begin():
            node = await service.authenticate_node(session, authorization)
            authenticated = node.id
            if node.id != node_id:
                raise NotFound.of("node", node_id)
            call = Call(NodeCalls(session, services, node))
            yield call
            await _audit(
                session, services, request, node_id=node.id, action=action, status=call.status, details=call.details
            )
    except Exception as exc:
        status = exc.status if isinstance(exc, CtrlplaneError) else 500
        await _audit_alone(services, request, node_id=authenticated, action=action, status=status, details={})
        raise


def _services(state: State) -> AppServices:
    services: AppServices = state.services
    return services


def _node_responses(*statuses: int) -> dict[int, ResponseSpec]:
    descriptions = {
        400: "Invalid payload",
        401: "Missing, invalid or expired node credential (register again)",
        403: "The node may not read this (a secret of an instance placed elsewhere)",
        404: "Unknown node (or another node's), or no such object",
        409: "Conflict (a hostname taken, an older report version, a concurrent change)",
        413: "Batch over the size limit",
        429: "Rate limited; retry after Retry-After seconds",
        503: "Database unavailable",
    }
    return {
        code: ResponseSpec(data_container=ErrorBody, description=descriptions[code], generate_examples=False)
        for code in sorted({400, 401, 403, 404, 429, 503, *statuses})
    }


NODE_OPT = {"own_auth": True}


def node_route(action: str) -> dict[str, Any]:
    return {**route("node", action), **NODE_OPT}


# --- registration and key rotation -------------------------------------------------------


@post(
    "/v1/register",
    operation_id="registerNode",
    tags=["nodes"],
    status_code=201,
    security=[{}],
    responses=_node_responses(409, 413),
    opt={**route("node", "register"), **NODE_OPT},
)
async def register_node(
    request: Request[Any, Any, Any], data: JSONBody[contract.RegisterRequest], state: State
) -> contract.RegisterResponse:
    """Register a node with a one-time bootstrap token (401 if invalid, expired, used or revoked)."""
    services = _services(state)
    await _rate_limit(request, services, f"register:{_client(request)}")
    try:
        async with services.db.write() as session, session.begin():
            answer = await service.register(session, services, data)
            details = {"hostname": data.hostname}
            await _audit(
                session, services, request, node_id=answer.node_id, action="register", status=201, details=details
            )
    except Exception as exc:
        status = exc.status if isinstance(exc, CtrlplaneError) else 500
        details = {"hostname": data.hostname}
        await _audit_alone(services, request, node_id=None, action="register", status=status, details=details)
        raise
    return answer


@post(
    "/v1/keys/rotate",
    operation_id="rotateNodeKeys",
    tags=["nodes"],
    status_code=200,
    security=NODE_SECURITY,
    responses=_node_responses(409, 413),
    opt={**route("node", "rotate_keys"), **NODE_OPT},
)
async def rotate_node_keys(
    request: Request[Any, Any, Any], data: JSONBody[contract.KeyRotateRequest], state: State
) -> contract.KeyRotateResponse:
    """A node's new X25519 public key: a new node credential and a new NSK sealed to the new key."""
    async with node_transaction(request, _services(state), data.node_id, "rotate_keys") as call:
        return await call.calls.rotate_keys(data)


# --- the node API ------------------------------------------------------------------------


class NodeController(Controller):
    path = "/v1/nodes/{node_id:str}"
    tags = ["nodes"]
    security = NODE_SECURITY

    @get(
        "/events",
        operation_id="nodeEvents",
        responses=_node_responses(),
        opt={**node_route("events"), EVENT_STREAM: True},
    )
    async def events(
        self, request: Request[Any, Any, Any], node_id: FromPath[str], state: State, last_event_id: LastEventId = None
    ) -> Response[contract.EventPage]:
        """The node's signed events after ``Last-Event-ID``: SSE (replay, then live) with
        ``Accept: text/event-stream``, else one JSON page."""
        services = _services(state)
        after = int(last_event_id) if last_event_id is not None else 0
        if after > MAX_EVENT_ID:
            raise InvalidInput("Last-Event-ID is out of range", details={"Last-Event-ID": last_event_id})
        async with node_transaction(request, services, node_id, "events") as call:
            call.details = {"after": after}
            if "text/event-stream" not in request.headers.get("accept", ""):
                return Response(await page(call.calls.session, services.vault.ring, node_id, after))
        ring, wake, poll = services.vault.ring, services.node_events, services.settings.event_poll_seconds

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            async for envelope in follow(services.db, ring, wake, node_id, after, poll_seconds=poll):
                if envelope is None:
                    yield ServerSentEventMessage(comment="keepalive")
                else:
                    data = msgspec.json.encode(envelope).decode()
                    yield ServerSentEventMessage(data=data, event=envelope.type, id=str(envelope.event_id))

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return ServerSentEvent(messages(), headers=headers)  # type: ignore[return-value]

    @post(
        "/heartbeat",
        operation_id="nodeHeartbeat",
        status_code=200,
        responses=_node_responses(409, 413),
        opt=node_route("heartbeat"),
    )
    async def heartbeat(
        self,
        request: Request[Any, Any, Any],
        node_id: FromPath[str],
        data: JSONBody[contract.HeartbeatRequest],
        state: State,
    ) -> contract.HeartbeatResponse:
        """The node is alive; the answer may ask it to reconcile or to rotate its keys."""
        async with node_transaction(request, _services(state), node_id, "heartbeat") as call:
            return await call.calls.heartbeat(data)

    @post(
        "/deregister",
        operation_id="deregisterNode",
        status_code=200,
        responses=_node_responses(409, 413),
        opt=node_route("deregister"),
    )
    async def deregister(
        self, request: Request[Any, Any, Any], node_id: FromPath[str], state: State
    ) -> contract.Acknowledged:
        """The node leaves: its credential stops working and its hostname can register again."""
        async with node_transaction(request, _services(state), node_id, "deregister") as call:
            return await call.calls.deregister()

    @put(
        "/capabilities",
        operation_id="updateNodeCapabilities",
        responses=_node_responses(409, 413),
        opt=node_route("capabilities"),
    )
    async def capabilities(
        self,
        request: Request[Any, Any, Any],
        node_id: FromPath[str],
        data: JSONBody[contract.Capabilities],
        state: State,
    ) -> contract.Acknowledged:
        """The node's capabilities (and capacity) changed."""
        async with node_transaction(request, _services(state), node_id, "capabilities") as call:
            return await call.calls.capabilities(data)

    @get("/state", operation_id="nodeState", responses=_node_responses(), opt=node_route("state"))
    async def state_(self, request: Request[Any, Any, Any], node_id: FromPath[str], state: State) -> contract.NodeState:
        """Everything the node should run (secret-free specs), for a reconcile."""
        async with node_transaction(request, _services(state), node_id, "state") as call:
            return await call.calls.state()

    @post(
        "/drift",
        operation_id="reportNodeDrift",
        status_code=200,
        responses=_node_responses(409, 413),
        opt=node_route("drift"),
    )
    async def drift(
        self,
        request: Request[Any, Any, Any],
        node_id: FromPath[str],
        data: JSONBody[contract.DriftReport],
        state: State,
    ) -> contract.Acknowledged:
        """What the node corrected during a reconcile (kept in the audit log)."""
        async with node_transaction(request, _services(state), node_id, "drift") as call:
            call.details = {"corrections": msgspec.to_builtins(data.corrections[:50])}
            return await call.calls.drift(data)

    @get("/secrets/{key:str}", operation_id="nodeSecret", responses=_node_responses(), opt=node_route("secret"))
    async def secret(
        self, request: Request[Any, Any, Any], node_id: FromPath[str], key: FromPath[str], state: State
    ) -> contract.EncryptedSecret:
        """A secret of an instance placed on this node, AES-256-GCM-encrypted under the node's NSK."""
        async with node_transaction(request, _services(state), node_id, "secret") as call:
            call.details = {"key": key}
            return await call.calls.secret(key)

    @post(
        "/report",
        operation_id="nodeReport",
        status_code=200,
        responses=_node_responses(409, 413),
        opt=node_route("report"),
    )
    async def report(
        self,
        request: Request[Any, Any, Any],
        node_id: FromPath[str],
        data: JSONBody[contract.ReportBatch],
        state: State,
    ) -> contract.Acknowledged:
        """Report entries (an instance's observed status under ``instance/{id}``)."""
        async with node_transaction(request, _services(state), node_id, "report") as call:
            return await call.calls.report(data)

    @post(
        "/executions/{execution_id:str}/ack",
        operation_id="ackNodeExecution",
        status_code=200,
        responses=_node_responses(409, 413),
        opt=node_route("execution_ack"),
    )
    async def ack(
        self,
        request: Request[Any, Any, Any],
        node_id: FromPath[str],
        execution_id: FromPath[str],
        data: JSONBody[contract.ExecutionAck],
        state: State,
    ) -> contract.Acknowledged:
        """Accept or reject an ``action_request``."""
        async with node_transaction(request, _services(state), node_id, "execution_ack") as call:
            return await call.calls.ack(execution_id, data)

    @post(
        "/executions/{execution_id:str}/result",
        operation_id="nodeExecutionResult",
        status_code=200,
        responses=_node_responses(409, 413),
        opt=node_route("execution_result"),
    )
    async def result(
        self,
        request: Request[Any, Any, Any],
        node_id: FromPath[str],
        execution_id: FromPath[str],
        data: JSONBody[contract.ExecutionResult],
        state: State,
    ) -> contract.Acknowledged:
        """An action's outcome."""
        async with node_transaction(request, _services(state), node_id, "execution_result") as call:
            return await call.calls.result(execution_id, data)

    async def _batch(
        self, request: Request[Any, Any, Any], node_id: str, state: State, action: str, kind: type[Any]
    ) -> Response[contract.BatchAccepted]:
        services = _services(state)
        settings = services.settings
        async with node_transaction(request, services, node_id, action) as call:
            # read only once the node is authenticated: a stranger's body gets a 401, never a 400
            raw = decompress(
                await request.body(),
                request.headers.get("content-encoding"),
                settings.node_batch_max_bytes,
                what="the batch",
            )
            check_json_depth(raw)
            records = service.parse_records(raw, kind, max_records=settings.node_batch_max_records)
            call.status = 202
            calls = call.calls
            if kind is contract.MetricRecord:
                answer = await calls.metrics(records)
            elif kind is contract.LogRecord:
                answer = await calls.logs(records)
            else:
                answer = await calls.audit(records, request_id=_request_id(request))
            call.details = {"accepted": answer.accepted, "rejected": answer.rejected}
        return Response(answer, status_code=202)

    @post(
        "/metrics",
        operation_id="nodeMetrics",
        status_code=202,
        responses=_node_responses(409, 413),
        opt={**node_route("metrics"), RECORD_BATCH: "Metric records (group, timestamp, data, instance_id)"},
    )
    async def metrics(
        self, request: Request[Any, Any, Any], node_id: FromPath[str], state: State
    ) -> Response[contract.BatchAccepted]:
        """A gzip'd JSON array (or NDJSON) of metric records; instance records become its samples."""
        return await self._batch(request, node_id, state, "metrics", contract.MetricRecord)

    @post(
        "/logs",
        operation_id="nodeLogs",
        status_code=202,
        responses=_node_responses(409, 413),
        opt={**node_route("logs"), RECORD_BATCH: "Log records (timestamp, message, source, instance_id)"},
    )
    async def logs(
        self, request: Request[Any, Any, Any], node_id: FromPath[str], state: State
    ) -> Response[contract.BatchAccepted]:
        """Gzip'd NDJSON log records; those of an instance placed here show in its logs."""
        return await self._batch(request, node_id, state, "logs", contract.LogRecord)

    @post(
        "/audit",
        operation_id="nodeAudit",
        status_code=202,
        responses=_node_responses(409, 413),
        opt={**node_route("audit"), RECORD_BATCH: "Host audit records (timestamp, source, event_type, action, result)"},
    )
    async def audit(
        self, request: Request[Any, Any, Any], node_id: FromPath[str], state: State
    ) -> Response[contract.BatchAccepted]:
        """Gzip'd NDJSON audit records of the host, kept in the system audit chain."""
        return await self._batch(request, node_id, state, "audit", contract.AuditRecord)


# --- the admins' side --------------------------------------------------------------------


class AdminNodesController(Controller):
    path = "/v1/admin/nodes"
    tags = ["nodes"]

    @post(
        "/enrollment-tokens",
        operation_id="createEnrollmentToken",
        status_code=201,
        responses=errors(404, mutating=True),
        opt=route("enrollment_token", "create", system_admin=True, shown_once=("token",)),
    )
    async def create_token(
        self, request: ApiRequest, data: JSONBody[schemas.EnrollmentTokenCreate]
    ) -> schemas.EnrollmentTokenCreated:
        """A one-time bootstrap token for a node pool (and optionally one tenant); shown only here."""
        context = context_of(request)
        return await AdminNodes(context).create_token(data)

    @get(
        "/enrollment-tokens",
        operation_id="listEnrollmentTokens",
        responses=errors(),
        opt=route("enrollment_token", "list", system_admin=True),
    )
    async def list_tokens(self, request: ApiRequest) -> Page[schemas.EnrollmentToken]:
        """Every bootstrap token, newest first, with its state (never its value)."""
        context = context_of(request)
        return await AdminNodes(context).list_tokens()

    @delete(
        "/enrollment-tokens/{token_id:str}",
        operation_id="revokeEnrollmentToken",
        status_code=204,
        responses=errors(404, mutating=True),
        opt=route("enrollment_token", "revoke", system_admin=True),
    )
    async def revoke_token(self, request: ApiRequest, token_id: FromPath[str]) -> None:
        """Revoke a bootstrap token: it can no longer register a node."""
        context = context_of(request)
        await AdminNodes(context).revoke_token(token_id)

    @get(operation_id="listNodes", responses=errors(), opt=route("node", "list", system_admin=True))
    async def list_nodes(self, request: ApiRequest, pool: FromQuery[str | None] = None) -> Page[schemas.NodeView]:
        """Every node: state, last heartbeat, capacity and the instances placed on it."""
        context = context_of(request)
        return await AdminNodes(context).list_nodes(pool)

    @post(
        "/signing-keys/rotate",
        operation_id="rotateNodeSigningKey",
        status_code=200,
        responses=errors(mutating=True),
        opt=route("node_signing_key", "rotate", system_admin=True),
    )
    async def rotate_signing_key(self, request: ApiRequest) -> schemas.SigningKeysView:
        """A new event-signing key; the previous one verifies until the transition period ends."""
        context = context_of(request)
        return await AdminNodes(context).rotate_signing_key()

    @get("/{node_id:str}", operation_id="getNode", responses=errors(404), opt=route("node", "get", system_admin=True))
    async def get_node(self, request: ApiRequest, node_id: FromPath[str]) -> schemas.NodeView:
        """One node."""
        context = context_of(request)
        return await AdminNodes(context).get_node(node_id)

    @post(
        "/{node_id:str}/cordon",
        operation_id="cordonNode",
        status_code=200,
        responses=errors(404, mutating=True),
        opt=route("node", "cordon", system_admin=True),
    )
    async def cordon(self, request: ApiRequest, node_id: FromPath[str]) -> schemas.NodeView:
        """No new instances are placed on the node."""
        context = context_of(request)
        return await AdminNodes(context).set_flags(node_id, cordoned=True, draining=False)

    @post(
        "/{node_id:str}/uncordon",
        operation_id="uncordonNode",
        status_code=200,
        responses=errors(404, mutating=True),
        opt=route("node", "uncordon", system_admin=True),
    )
    async def uncordon(self, request: ApiRequest, node_id: FromPath[str]) -> schemas.NodeView:
        """The node takes new instances again (ends a cordon or a drain)."""
        context = context_of(request)
        return await AdminNodes(context).set_flags(node_id, cordoned=False, draining=False)

    @post(
        "/{node_id:str}/drain",
        operation_id="drainNode",
        status_code=200,
        responses=errors(404, mutating=True),
        opt=route("node", "drain", system_admin=True),
    )
    async def drain(self, request: ApiRequest, node_id: FromPath[str]) -> schemas.NodeView:
        """Cordon the node and have its instances moved to other nodes of its pool."""
        context = context_of(request)
        return await AdminNodes(context).set_flags(node_id, cordoned=True, draining=True)

    @post(
        "/{node_id:str}/rotate-keys",
        operation_id="requestNodeKeyRotation",
        status_code=200,
        responses=errors(404, mutating=True),
        opt=route("node", "request_key_rotation", system_admin=True),
    )
    async def rotate_keys(self, request: ApiRequest, node_id: FromPath[str]) -> schemas.NodeView:
        """Ask the node to rotate its keys (a ``rotate_keys`` event and heartbeat flag)."""
        context = context_of(request)
        return await AdminNodes(context).request_key_rotation(node_id)

    @post(
        "/{node_id:str}/actions",
        operation_id="requestNodeAction",
        status_code=201,
        responses=errors(404, mutating=True),
        opt=route("node_execution", "create", system_admin=True),
    )
    async def request_action(
        self, request: ApiRequest, node_id: FromPath[str], data: JSONBody[schemas.ActionCreate]
    ) -> schemas.Execution:
        """Send the node an ``action_request``; its ack and result land on the execution."""
        context = context_of(request)
        return await AdminNodes(context).request_action(node_id, data)

    @get(
        "/{node_id:str}/executions/{execution_id:str}",
        operation_id="getNodeExecution",
        responses=errors(404),
        opt=route("node_execution", "get", system_admin=True),
    )
    async def get_execution(
        self, request: ApiRequest, node_id: FromPath[str], execution_id: FromPath[str]
    ) -> schemas.Execution:
        """An action sent to a node and what it answered."""
        context = context_of(request)
        return await AdminNodes(context).get_execution(node_id, execution_id)


ROUTE_HANDLERS: tuple[Any, ...] = (register_node, rotate_node_keys, NodeController, AdminNodesController)
