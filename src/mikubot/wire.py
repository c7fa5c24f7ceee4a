"""The base of the small models that travel as JSON: progress event details and a record's nested parts.

Their producers send some keys only when they apply (an upload's ``guild_id``, a face's ``attributes``, a
stage's ``summary``), so a ``Sparse`` model dumps exactly the fields it was given — no ``null`` padding —
and one read back from stored JSON (a history row, a report file) dumps the same keys again: the JSON the
panel, the API and the history table see is the producer's, typed on the way through. Keys an older
version wrote that a model no longer declares are ignored when it is read.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Sparse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @model_serializer(mode="wrap")
    def _given_fields_only(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation: the JSON schema (the panel's OpenAPI) stays the model's own.
        given = self.model_fields_set | set(self.model_extra or ())
        dumped: dict[str, Any] = handler(self)
        return {k: v for k, v in dumped.items() if k in given}
