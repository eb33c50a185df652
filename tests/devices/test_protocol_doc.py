"""devices/PROTOCOL.md §3 tells device authors the truth: its manifest example is what the server issues."""

import json
import re
from datetime import datetime
from urllib.parse import urlparse

import pytest

from devices.services.checkin import CheckinDevice, checkin_desired
from devices.services.desired_state import desired_state_set
from tests.devices.checkin_helpers import device_with_credential, registry_version
from tests.live import ROOT

pytestmark = pytest.mark.django_db


def documented_answer() -> dict:
    """The example `200` answer of PROTOCOL.md §3 (the JSON block after "Answer `200`")."""
    text = (ROOT / "devices" / "PROTOCOL.md").read_text()
    block = re.search(r"Answer `200`.*?```json\n(.*?)```", text, re.S)
    assert block, "PROTOCOL.md §3 has no example answer"
    return json.loads(re.sub(r'"<[^"]*>"', '"x"', block[1]).replace("...", ""))


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def test_it_issues_the_manifest_the_protocol_shows_with_its_expiry_and_an_absolute_url(settings):
    settings.MANIFEST_TTL_SECONDS = 3600  # the default the document speaks of
    documented = documented_answer()["desired"]["manifest"]
    device, _credential = device_with_credential(documented["device_id"])
    version, _content = registry_version(documented["model"], documented["version"])
    desired_state_set(devices=[device], version=version)
    calling = CheckinDevice(pk=device.pk, device_id=device.device_id, status=device.status, key_hash="", sequence=1,
                            version_id=version.pk, rollback=False, traceparent="", version_status=version.status)

    issued = checkin_desired(device=calling, now=parse(documented["issued_at"]))["manifest"]

    assert set(issued) == set(documented)
    assert (issued["issued_at"], issued["expires_at"]) == (documented["issued_at"], documented["expires_at"])
    for url in (issued["url"], documented["url"]):
        assert urlparse(url).scheme in ("http", "https") and urlparse(url).netloc, url
