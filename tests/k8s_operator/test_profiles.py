"""AttachProfile resources are upserted into ipamd and deleted from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .operator_harness import Ipamd, KubeApi

pytest_plugins = ("k8s_operator.operator_harness",)
pytestmark = pytest.mark.usefixtures("operator")

PROFILES = "leasewire.io/v1alpha1/attachprofiles"
PROFILES_PATH = "/apis/leasewire.io/v1alpha1/attachprofiles"


async def test_profile_synced_and_deleted(kube: KubeApi, ipamd: Ipamd) -> None:
    body = {
        "apiVersion": "leasewire.io/v1alpha1",
        "kind": "AttachProfile",
        "metadata": {"name": "metal"},
        "spec": {
            "nodeSelector": {"tier": "metal"},
            "driver": "macvlan",
            "options": {"master": "eth1"},
            "priority": 5,
        },
    }
    await kube.request("POST", PROFILES_PATH, body)
    await kube.wait(
        lambda: kube.condition(PROFILES, "metal", "Synced").get("status") == "True", "Synced"
    )
    status, profile = await ipamd.call("GET", "/v1/attach-profiles/metal")
    assert status == 200
    assert profile["driver"] == "macvlan"
    assert profile["nodeSelector"] == {"tier": "metal"}
    assert profile["priority"] == 5

    await kube.request("DELETE", f"{PROFILES_PATH}/metal")
    await kube.wait(lambda: kube.get(PROFILES, "metal") is None, "the profile's deletion")
    status, _ = await ipamd.call("GET", "/v1/attach-profiles/metal")
    assert status == 404
