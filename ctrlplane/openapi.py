"""OpenAPI generation details Litestar leaves out.

Request bodies are msgspec Structs with ``forbid_unknown_fields=True``: an unknown field is a 400.
Litestar's schema for a Struct does not say so, so a client generated from the document (or a
fuzzer) would believe extra fields are fine; ``StrictStructSchemaPlugin`` adds
``additionalProperties: false`` to those Structs' schemas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition


class StrictStructSchemaPlugin(StructSchemaPlugin):
    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False  # the registered component itself, shared by every reference
        return schema
