from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.webhooks import schemas
from ctrlplane.webhooks.service import WebhookService

StateFilter = Annotated[
    Literal["pending", "sending", "succeeded", "failed"] | None,
    QueryParameter(name="state", description="Only deliveries in this state"),
]


class WebhookController(Controller):
    tags = ["webhooks"]

    @post(
        "/v1/webhooks",
        operation_id="createWebhook",
        responses=errors(mutating=True),
        opt=route("webhook", "create", shown_once=("secret",)),
    )
    async def create(self, data: JSONBody[schemas.WebhookCreate], request: ApiRequest) -> schemas.WebhookCreated:
        """Register an endpoint for signed event deliveries; its secret is shown only in this answer."""
        context = context_of(request)
        return await WebhookService(context).create(data)

    @get("/v1/webhooks", operation_id="listWebhooks", opt=route("webhook", "list"), responses=errors())
    async def list_webhooks(
        self, request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Webhook]:
        """The tenant's webhook endpoints, newest first."""
        context = context_of(request)
        return await WebhookService(context).list(cursor=cursor, limit=limit)

    @get(
        "/v1/webhooks/{webhook_id:str}",
        operation_id="getWebhook",
        responses=errors(404),
        opt=route("webhook", "get"),
    )
    async def get_webhook(self, webhook_id: FromPath[str], request: ApiRequest) -> schemas.Webhook:
        """A webhook endpoint."""
        context = context_of(request)
        return await WebhookService(context).get(webhook_id)

    @patch(
        "/v1/webhooks/{webhook_id:str}",
        operation_id="updateWebhook",
        responses=errors(404, mutating=True),
        opt=route("webhook", "update"),
    )
    async def update(
        self, webhook_id: FromPath[str], data: JSONBody[schemas.WebhookUpdate], request: ApiRequest
    ) -> schemas.Webhook:
        """Change only the fields present; enabling a failing endpoint resumes its deliveries."""
        context = context_of(request)
        return await WebhookService(context).update(webhook_id, data)

    @delete(
        "/v1/webhooks/{webhook_id:str}",
        operation_id="deleteWebhook",
        responses=errors(404, mutating=True),
        opt=route("webhook", "delete"),
    )
    async def delete_webhook(self, webhook_id: FromPath[str], request: ApiRequest) -> None:
        """Delete an endpoint and its deliveries."""
        context = context_of(request)
        await WebhookService(context).delete(webhook_id)

    @post(
        "/v1/webhooks/{webhook_id:str}/rotate-secret",
        operation_id="rotateWebhookSecret",
        responses=errors(404, mutating=True),
        opt=route("webhook", "rotate_secret", shown_once=("secret",)),
    )
    async def rotate_secret(
        self, webhook_id: FromPath[str], data: JSONBody[schemas.SecretRotate], request: ApiRequest
    ) -> schemas.WebhookSecret:
        """A new signing secret; the previous one still signs during the overlap."""
        context = context_of(request)
        return await WebhookService(context).rotate_secret(webhook_id, data)

    @post(
        "/v1/webhooks/{webhook_id:str}/test",
        operation_id="testWebhook",
        responses=errors(404, mutating=True),
        opt=route("webhook", "test"),
    )
    async def send_test(self, webhook_id: FromPath[str], request: ApiRequest) -> schemas.Delivery:
        """Queue a webhook.test message to this endpoint."""
        context = context_of(request)
        return await WebhookService(context).send_test(webhook_id)

    @get(
        "/v1/webhooks/{webhook_id:str}/deliveries",
        operation_id="listWebhookDeliveries",
        responses=errors(404),
        opt=route("webhook_delivery", "list"),
    )
    async def deliveries(
        self,
        webhook_id: FromPath[str],
        request: ApiRequest,
        delivery_state: StateFilter = None,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
    ) -> Page[schemas.Delivery]:
        """An endpoint's deliveries, newest first: state, attempts, last response code and latency."""
        context = context_of(request)
        return await WebhookService(context).deliveries(webhook_id, state=delivery_state, cursor=cursor, limit=limit)

    @get(
        "/v1/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}",
        operation_id="getWebhookDelivery",
        responses=errors(404),
        opt=route("webhook_delivery", "get"),
    )
    async def delivery(
        self, webhook_id: FromPath[str], delivery_id: FromPath[str], request: ApiRequest
    ) -> schemas.Delivery:
        """One delivery with its recent attempts."""
        context = context_of(request)
        return await WebhookService(context).delivery(webhook_id, delivery_id)

    @post(
        "/v1/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}/redeliver",
        operation_id="redeliverWebhook",
        responses=errors(404, mutating=True),
        opt=route("webhook_delivery", "redeliver"),
    )
    async def redeliver(
        self, webhook_id: FromPath[str], delivery_id: FromPath[str], request: ApiRequest
    ) -> schemas.Delivery:
        """Send a delivery again, or a queued one now (same webhook-id); a failing endpoint becomes active."""
        context = context_of(request)
        return await WebhookService(context).redeliver(webhook_id, delivery_id)
