"""OpenAPI generation details Litestar leaves out.

Request bodies are msgspec Structs with ``forbid_unknown_fields=True``: an unknown field is a 400.
Litestar's schema for a Struct does not say so, so a client generated from the document (or a
fuzzer) would believe extra fields are fine; ``StrictStructSchemaPlugin`` adds
``additionalProperties: false`` to those Structs' schemas.

The document is built when it is first asked for (``/schema``, or ``app.openapi_schema``), not
when the app is made: ``fix_openapi`` puts the fixes below into the build itself. Building it
cost half of ``create_app`` (about 0.3 s), paid by every test that makes an app.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.enums import ParamType
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Parameter,
    RequestBody,
    Schema,
)
from litestar.routes import HTTPRoute

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition


class StrictStructSchemaPlugin(StructSchemaPlugin):
    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False  # the registered component itself, shared by every reference
        return schema


EVENT_STREAM = "event_stream"
RECORD_BATCH = "record_batch"
OTLP_EXPORT = "otlp_export"


def document_event_streams(app: Litestar, openapi: OpenAPI) -> None:
    """GET routes marked ``event_stream`` in their ``opt`` answer 200 with JSON, or, when the client
    asks (``Accept: text/event-stream``, or ``follow=true`` for logs), with Server-Sent Events.
    Litestar documents one media type per status; this adds ``text/event-stream`` to the 200 of
    those operations, so the document says what the route really sends."""
    paths = {
        route.path_format
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.opt.get(EVENT_STREAM)
    }
    for path, item in (openapi.paths or {}).items():
        if path in paths and item.get is not None and item.get.responses is not None:
            success = item.get.responses.get("200")
            if isinstance(success, OpenAPIResponse):
                success.content = {
                    **(success.content or {}),
                    "text/event-stream": OpenAPIMediaType(schema=SSE_EVENT),
                }


SSE_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    required=["data"],
    properties={
        "data": Schema(type=OpenAPIType.STRING, description="The event's JSON, as one line"),
        "event": Schema(type=OpenAPIType.STRING, description="Its type (``message`` when absent)"),
        "id": Schema(type=OpenAPIType.STRING, description="What ``Last-Event-ID`` resumes after"),
        "retry": Schema(type=OpenAPIType.INTEGER),
    },
    description="One Server-Sent Event (OpenAPI 3.1: the schema of a text/event-stream is per event)",
)


def headers_are_never_null(_app: Litestar, openapi: OpenAPI) -> None:
    """An optional header parameter typed ``str | None`` is documented by Litestar as "string or
    null"; a header cannot be null (a client would send the text ``null``), so its schema is the
    string alone: absent means "not given"."""
    for item in (openapi.paths or {}).values():
        for operation in (item.get, item.put, item.post, item.delete, item.patch):
            for parameter in (operation.parameters or []) if operation is not None else []:
                if not isinstance(parameter, Parameter) or parameter.param_in != ParamType.HEADER:
                    continue
                schema = parameter.schema
                if isinstance(schema, Schema) and schema.one_of:
                    kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
                    if len(kept) == 1 and isinstance(kept[0], Schema):
                        parameter.schema = dataclasses.replace(
                            kept[0],
                            pattern=schema.pattern or kept[0].pattern,
                            max_length=schema.max_length or kept[0].max_length,
                            min_length=schema.min_length or kept[0].min_length,
                        )


def etags_are_quoted_versions(_app: Litestar, openapi: OpenAPI) -> None:
    """Litestar documents a response header without a schema unless it has a fixed value; an
    ``ETag`` of ctrlplane is always a version as a strong entity tag, so its schema says that."""
    for item in (openapi.paths or {}).values():
        for operation in (item.get, item.put, item.post, item.delete, item.patch):
            for response in (operation.responses or {}).values() if operation is not None else []:
                header = (response.headers or {}).get("ETag") if isinstance(response, OpenAPIResponse) else None
                if isinstance(header, OpenAPIHeader) and header.schema is None:
                    header.schema = Schema(type=OpenAPIType.STRING, pattern=r'^"[0-9]+"$')


_STRING_CONSTRAINTS = ("pattern", "max_length", "min_length", "format")


def _constraints_on_the_string_branch(schema: Schema) -> None:
    if schema.one_of and any(getattr(schema, name) is not None for name in _STRING_CONSTRAINTS):
        strings = [s for s in schema.one_of if isinstance(s, Schema) and s.type == OpenAPIType.STRING]
        if len(strings) == 1:
            moved = {name: getattr(schema, name) for name in _STRING_CONSTRAINTS if getattr(schema, name) is not None}
            schema.one_of = [dataclasses.replace(s, **moved) if s is strings[0] else s for s in schema.one_of]
            for name in moved:
                setattr(schema, name, None)
    children = [*(schema.properties or {}).values(), *(schema.one_of or []), *(schema.any_of or [])]
    children += [*(schema.all_of or []), *([schema.items] if schema.items is not None else [])]
    for child in children:
        if isinstance(child, Schema):
            _constraints_on_the_string_branch(child)


def nullable_strings_keep_their_constraints(_app: Litestar, openapi: OpenAPI) -> None:
    """Litestar documents ``str (with a pattern or lengths) | None`` as ``oneOf: [string, null]``
    with the constraints beside the ``oneOf``; generators that pick the string branch (schemathesis)
    then make strings the API refuses. The constraints go into the string branch, where they mean
    what the Struct says."""
    for schema in ((openapi.components.schemas or {}) if openapi.components else {}).values():
        _constraints_on_the_string_branch(schema)


def optional_bodies_are_optional(app: Litestar, openapi: OpenAPI) -> None:
    """A handler whose ``data`` has a default (suspend and unsuspend: seed 001 sends no body) takes
    a request without a body; Litestar documents every body as required, so the document says
    otherwise where it is not."""
    optional = {
        (route.path_format, method.lower())
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if (data := handler.parsed_fn_signature.parameters.get("data")) is not None and data.has_default
        for method in handler.http_methods
    }
    for path, item in (openapi.paths or {}).items():
        for method in ("post", "put", "patch"):
            operation = getattr(item, method)
            if operation is not None and operation.request_body is not None and (path, method) in optional:
                operation.request_body.required = False


def document_record_batches(app: Litestar, openapi: OpenAPI) -> None:
    """POST routes marked ``record_batch`` (a node's metrics, logs and audit batches) read their
    body themselves, because it may be gzip'd (``Content-Encoding: gzip``) and NDJSON; Litestar
    sees no body parameter. This documents the body: a JSON array of records, or the same records
    as NDJSON (``application/x-ndjson``), either optionally gzip'd."""
    paths = {
        route.path_format: handler.opt[RECORD_BATCH]
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.opt.get(RECORD_BATCH)
    }
    record = Schema(type=OpenAPIType.OBJECT, additional_properties=True)
    for path, item in (openapi.paths or {}).items():
        if path in paths and item.post is not None:
            item.post.request_body = RequestBody(
                required=False,
                description=f"{paths[path]}: a JSON array of records, or NDJSON; Content-Encoding: gzip or identity",
                content={
                    "application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.ARRAY, items=record)),
                    "application/x-ndjson": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
                },
            )


def document_otlp_exports(app: Litestar, openapi: OpenAPI) -> None:
    """POST routes marked ``otlp_export`` (the OTLP receiver) read their body themselves: OTLP's
    protobuf (``application/x-protobuf``) or JSON encoding of the message the mark names, either
    optionally gzip'd. Their 200 answers in the request's encoding."""
    paths = {
        route.path_format: handler.opt[OTLP_EXPORT]
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.opt.get(OTLP_EXPORT)
    }
    for path, item in (openapi.paths or {}).items():
        if path not in paths or item.post is None:
            continue
        message = paths[path]
        item.post.request_body = RequestBody(
            required=False,
            description=f"An OTLP {message} (opentelemetry-proto 1.x); Content-Encoding: gzip or identity",
            content={
                "application/x-protobuf": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                ),
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        additional_properties=True,
                        description=f"{message} in OTLP's JSON encoding (lowerCamelCase, hex span and trace IDs)",
                    )
                ),
            },
        )
        success = (item.post.responses or {}).get("200")
        if isinstance(success, OpenAPIResponse):
            success.content = {
                **(success.content or {}),
                "application/x-protobuf": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                ),
            }


FIXES = (
    document_event_streams,
    document_record_batches,
    document_otlp_exports,
    optional_bodies_are_optional,
    headers_are_never_null,
    etags_are_quoted_versions,
    nullable_strings_keep_their_constraints,
)


class _FixedOpenAPIPlugin(OpenAPIPlugin):
    """Litestar's OpenAPI plugin, whose build applies ``FIXES``."""

    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        openapi = super()._build_openapi()
        for fix in FIXES:
            fix(self.app, openapi)
        return openapi


def fix_openapi(app: Litestar) -> None:
    """Make ``app``'s OpenAPI document, whenever it is built, with ``FIXES`` applied. Litestar makes
    its plugin itself (no hook for a subclass), so the instance's class is swapped for one that adds
    nothing but the build step (same slots)."""
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = _FixedOpenAPIPlugin
