"""devices/PROTOCOL.md tells device authors the truth: its examples are what the server accepts and issues."""

import json
import re
from datetime import datetime
from urllib.parse import urlparse

import pytest

from devices.services.checkin import CheckinDevice, CheckinSlot, checkin_desired, checkin_parse
from tests.devices.checkin_helpers import device_with_credential, registry_version
from tests.live import ROOT

pytestmark = pytest.mark.django_db


def documented_json(after: str) -> dict:
    """The JSON block of PROTOCOL.md that follows `after`, with its <placeholders> and ... filled in."""
    text = (ROOT / "devices" / "PROTOCOL.md").read_text()
    block = re.search(re.escape(after) + r".*?```json\n(.*?)```", text, re.S)
    assert block, f"PROTOCOL.md has no example after {after!r}"
    return json.loads(re.sub(r'"<[^"]*>"', '"x"', block[1]).replace("...", ""))


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def test_it_issues_the_manifests_the_protocol_shows_one_per_slot_with_their_expiry_and_absolute_urls(settings):
    settings.MANIFEST_TTL_SECONDS = 3600  # the default the document speaks of
    documented = [entry["manifest"] for entry in documented_json("Answer `200`")["desired"]]
    device, _credential = device_with_credential(documented[0]["device_id"])
    slots = []
    for manifest in documented:
        if manifest["action"] == "install":
            version, _content = registry_version(manifest["model"], manifest["version"])
            slots.append(CheckinSlot(manifest["model"], manifest["sequence"], version.pk, False, manifest["rollback"],
                                     "", version.status))
        else:
            slots.append(CheckinSlot(manifest["model"], manifest["sequence"], None, True, False, "", ""))
    calling = CheckinDevice(pk=device.pk, device_id=device.device_id, status=device.status, key_hash="",
                            slots=tuple(slots))

    issued = [entry["manifest"] for entry in checkin_desired(device=calling, now=parse(documented[0]["issued_at"]))]

    assert [(m["action"], m["model"], m["sequence"]) for m in issued] == [
        (m["action"], m["model"], m["sequence"]) for m in documented]  # by model name, as documented
    for mine, shown in zip(issued, documented, strict=True):
        assert set(mine) == set(shown)
        assert (mine["issued_at"], mine["expires_at"]) == (shown["issued_at"], shown["expires_at"])
        if shown["action"] == "install":
            for url in (mine["url"], shown["url"]):
                assert urlparse(url).scheme in ("http", "https") and urlparse(url).netloc, url


def test_the_documented_three_model_check_in_is_accepted(make_version):
    body = documented_json("### 3.1 The request")
    for entry in body["models"]:
        make_version(entry["model"], entry["version"])
    now = parse(body["installs"][0]["at"])

    report = checkin_parse(json.dumps(body).encode(), now=now)

    assert [m["model"] for m in report.models] == ["text-detector", "recogniser", "orientation"]
    assert (len(report.installs), len(report.metrics)) == (1, 1)
