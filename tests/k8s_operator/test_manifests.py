"""Every manifest in deploy/ is valid against the Kubernetes schemas, offline.

Built-in kinds are checked with kubernetes-validate's bundled schemas (strict:
unknown fields fail); custom resources with the openAPIV3Schema of their CRD
in deploy/crds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document:
                found.append((f"{path.relative_to(DEPLOY)}#{index}", document))
    return found


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for _, document in documents():
        if document["kind"] != "CustomResourceDefinition":
            continue
        spec = document["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schemas[(api_version, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize(("where", "document"), documents(), ids=[w for w, _ in documents()])
def test_manifest_valid(where: str, document: dict[str, Any]) -> None:
    custom = crd_schemas().get((document["apiVersion"], document["kind"]))
    if custom is not None:
        jsonschema.Draft7Validator(custom).validate(document)
        return
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_ippool_crd_shape() -> None:
    crd = next(d for _, d in documents() if d["metadata"]["name"] == "ippools.leasewire.io")
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["CIDR", "Allocated", "Free", "Ready", "Age"]
    cidr = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["cidr"]
    rules = [rule["rule"] for rule in cidr["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules


def test_custom_schema_rejects_bad_pool() -> None:
    schema = crd_schemas()[("leasewire.io/v1alpha1", "IPPool")]
    bad = {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "bad"},
        "spec": {"cidr": "10.0.0.0/24", "vlan": 5000},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)
