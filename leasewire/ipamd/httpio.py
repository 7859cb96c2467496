"""Reading request bodies into wire models and writing wire models as JSON answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from leasewire.ipamd.errors import InvalidRequest

ModelT = TypeVar("ModelT", bound=BaseModel)


def invalid_request(error: ValidationError) -> InvalidRequest:
    """Describe every problem of a request body, each naming its field and value."""
    problems: list[dict[str, object]] = []
    parts: list[str] = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        problem: dict[str, object] = {"field": field, "message": item["msg"]}
        if item["type"] in ("missing", "json_invalid"):
            parts.append(f"{field}: {item['msg']}")
        else:
            problem["value"] = item["input"]
            parts.append(f"{field} = {item['input']!r}: {item['msg']}")
        problems.append(problem)
    return InvalidRequest("invalid request: " + "; ".join(parts), {"errors": problems})


async def read_body(request: web.Request, model: type[ModelT]) -> ModelT:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as error:
        raise invalid_request(error) from None


def json_answer(model: BaseModel | Sequence[BaseModel], status: int = 200) -> web.Response:
    if isinstance(model, BaseModel):
        body: object = model.model_dump(mode="json", by_alias=True)
    else:
        body = [item.model_dump(mode="json", by_alias=True) for item in model]
    return web.json_response(body, status=status)
