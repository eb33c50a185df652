"""An upload session on local disk against a real gunicorn: parts PUT to the API in parallel, resumed, completed."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from rest_framework_simplejwt.tokens import AccessToken

from models_app.models import ModelVersion
from tests.artifacts import onnx_model_bytes
from tests.live import gunicorn_server
from tests.models_app.conftest import part_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MB = 1024 * 1024


def test_parts_go_to_the_api_in_parallel_and_a_rerun_sends_only_the_rest(make_user, tmp_path):
    content = onnx_model_bytes(big_initializer_bytes=11 * MB)
    bearer = {"Authorization": f"Bearer {AccessToken.for_user(make_user('ModelDeveloper'))}"}
    fields = {"name": "llm", "version": "1.0.0", "framework": "onnx", "size": len(content),
              "sha256": hashlib.sha256(content).hexdigest(), "filename": "llm.onnx"}
    local_disk = {"S3_BUCKET": "", "ARTIFACT_ROOT": str(tmp_path), "UPLOAD_PART_BYTES": str(5 * MB)}
    with gunicorn_server(env=local_disk) as (base_url, _process):
        session = requests.post(f"{base_url}/api/v1/uploads", json=fields, headers=bearer, timeout=30).json()
        assert (session["storage"], session["part_count"]) == ("local", 3)
        parts = requests.post(f"{base_url}/api/v1/uploads/{session['id']}/parts", json={"numbers": [1, 2, 3]},
                              headers=bearer, timeout=30).json()["parts"]
        assert all(part["auth"] and part["url"].startswith(base_url) for part in parts)

        def put(part, data=None):
            return requests.put(part["url"], data=part_of(content, session, part["number"]) if data is None else data,
                                headers=bearer, timeout=60)

        short = put(parts[1], b"x" * 1000)
        assert (short.status_code, short.json()["error"]["code"]) == (400, "PART_SIZE_MISMATCH")
        assert put(parts[1]).json() == {"number": 2, "size": 5 * MB}  # then the client dies

        resumed = requests.post(f"{base_url}/api/v1/uploads", json=fields, headers=bearer, timeout=30)
        assert (resumed.status_code, resumed.json()["parts_done"]) == (200, [2])
        with ThreadPoolExecutor(max_workers=2) as pool:
            assert [answer.status_code for answer in pool.map(put, [parts[0], parts[2]])] == [200, 200]
        done = requests.post(f"{base_url}/api/v1/uploads/{session['id']}/complete", headers=bearer, timeout=60)

    assert done.status_code == 201, done.text
    version = ModelVersion.objects.get(model_id="llm-1.0.0")
    assert (tmp_path / version.storage_key).read_bytes() == content
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / version.storage_key]
