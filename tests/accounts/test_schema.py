"""The OpenAPI document describes every accounts endpoint with its roles, errors and the token scheme."""

from drf_spectacular.generators import SchemaGenerator


def test_it_documents_every_accounts_operation():
    schema = SchemaGenerator(urlconf="hotswap.accounts.urls").get_schema(request=None, public=True)

    operations = {(path, method): op for path, item in schema["paths"].items() for method, op in item.items()}
    assert set(operations) == {
        ("/auth/token", "post"), ("/auth/token/refresh", "post"), ("/auth/me", "get"),
        ("/tokens", "get"), ("/tokens", "post"), ("/tokens/{token_id}", "delete"),
    }
    for (path, _method), op in operations.items():
        assert op["summary"] and "401" in op["responses"], path
    for key in (("/tokens", "get"), ("/tokens", "post"), ("/tokens/{token_id}", "delete")):
        assert "Admin" in operations[key]["description"] and "403" in operations[key]["responses"]
    assert "apiToken" in schema["components"]["securitySchemes"]
    assert "key" in schema["components"]["schemas"]["ApiTokenCreated"]["properties"]
