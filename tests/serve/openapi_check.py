"""Checks HTTP answers against the operator API's OpenAPI 3.1 document (opsdsl/serve/openapi.json).

`OpenApiCheck.check(response)` finds the operation by method and path template, requires
the status among its responses (or a problem+json 404/405 for a path or method the
document does not describe), the content type among the response's media types, and
validates a JSON body against the schema with jsonschema Draft 2020-12, the dialect the
document declares. The API tests hook it into their httpx client, so every answer a test
sees is checked.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import httpx
from jsonschema import Draft202012Validator


def load_document() -> dict[str, Any]:
    return json.loads(resources.files("opsdsl.serve").joinpath("openapi.json").read_bytes())


class OpenApiCheck:
    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document = document or load_document()
        self.components = self.document["components"]
        self.templates = []
        for template in self.document["paths"]:
            names = re.findall(r"\{(\w+)\}", template)
            pattern = re.escape(template)
            for name in names:
                # the last parameter of the evidence path takes folders too (`a/b.txt`)
                part = ".+" if template.endswith("{" + name + "}") and name == "name" else "[^/]+"
                pattern = pattern.replace(re.escape("{" + name + "}"), part)
            literal = len(re.sub(r"\{\w+\}", "", template))
            self.templates.append((literal, template, re.compile(pattern)))
        self.templates.sort(key=lambda item: -item[0])  # literal segments win: /v1/runs/x/ack over {run}
        self.checked: list[tuple[str, str, int]] = []

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for _, template, pattern in self.templates:
            if pattern.fullmatch(path):
                operation = self.document["paths"][template].get(method.lower())
                return (template, operation) if operation is not None else None
        return None

    def check(self, response: httpx.Response) -> None:
        response.read()
        method, path = response.request.method, response.request.url.path
        found = self.operation(method, path)
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if found is None:  # not an operation of the document: a problem, 404 or 405
            assert response.status_code in (404, 405), f"{method} {path}: {response.status_code} {response.text[:300]}"
            assert media == "application/problem+json", f"{method} {path}: {media}"
            self._validate({"$ref": "#/components/schemas/Problem"}, response.json(), f"{method} {path}")
            self.checked.append((method, path, response.status_code))
            return
        template, operation = found
        declared = operation["responses"].get(str(response.status_code))
        assert declared is not None, (
            f"{method} {template}: status {response.status_code} is not in the document ({response.text[:300]})"
        )
        declared = self._resolve(declared)
        content = declared.get("content") or {}
        if not content:
            assert not response.content, f"{method} {template} {response.status_code}: a body the document has not"
            return
        assert media in content, f"{method} {template} {response.status_code}: {media!r} not in {sorted(content)}"
        schema = content[media].get("schema")
        if schema is not None and (media == "application/json" or media.endswith("+json")):
            self._validate(schema, response.json(), f"{method} {template} {response.status_code}")
        self.checked.append((method, template, response.status_code))

    def _resolve(self, item: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in item:
            node: Any = self.document
            for part in item["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            item = node
        return item

    def _validate(self, schema: dict[str, Any], value: Any, where: str) -> None:
        root = {**schema, "components": self.components}  # `#/components/...` resolves against this root
        errors = sorted(Draft202012Validator(root).iter_errors(value), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
