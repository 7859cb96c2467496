"""OpenAPI 3.1 document of ipamd's HTTP API, served at ``GET /v1/openapi.json``.

Each route registers its operation here with the wire models of its request
and answer; the JSON schemas come from those pydantic models. A unit test
checks that the registered operations and the application's routes are the
same set, so a new route without documentation fails the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel

from leasewire.api import ErrorBody


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_is_list: bool = False
    query: tuple[str, ...] = ()
    statuses: tuple[int, ...] = (200,)
    extra: dict[str, Any] = field(default_factory=dict)


OPERATIONS: dict[tuple[str, str], Operation] = {}


def register_operation(
    method: str,
    path: str,
    summary: str,
    *,
    request: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    response_is_list: bool = False,
    query: tuple[str, ...] = (),
    statuses: tuple[int, ...] = (200,),
) -> None:
    """Add one operation (``method`` in upper case, ``path`` as routed) to the document."""
    OPERATIONS[(method.upper(), path)] = Operation(
        method=method.upper(),
        path=path,
        summary=summary,
        request=request,
        response=response,
        response_is_list=response_is_list,
        query=query,
        statuses=statuses,
    )


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(operation: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"summary": operation.summary, "responses": {}}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_parameters(operation.path)
    ]
    parameters.extend(
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in operation.query
    )
    if parameters:
        body["parameters"] = parameters
    if operation.request is not None:
        body["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.request, schemas)}},
        }
    answer: dict[str, Any] = {"type": "object"}
    if operation.response is not None:
        answer = _ref(operation.response, schemas)
        if operation.response_is_list:
            answer = {"type": "array", "items": answer}
    for status in operation.statuses:
        body["responses"][str(status)] = {
            "description": "success",
            "content": {"application/json": {"schema": answer}},
        }
    body["responses"]["default"] = {
        "description": "error with a stable code",
        "content": {"application/json": {"schema": _ref(ErrorBody, schemas)}},
    }
    return body


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _package_version() -> str:
    try:
        return version("leasewire")
    except PackageNotFoundError:
        return "0"


def build_document() -> dict[str, Any]:
    """Build the OpenAPI document from the registered operations."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in sorted(OPERATIONS.items(), key=lambda item: item[0][::-1]):
        paths.setdefault(path, {})[method.lower()] = _operation(operation, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "leasewire ipamd", "version": _package_version()},
        "paths": paths,
        "components": {"schemas": schemas},
    }
