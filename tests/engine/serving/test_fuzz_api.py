"""The whole HTTP API fuzzed from its own /openapi.json with schemathesis, in process (ASGI).

Every operation gets a bounded number of generated requests, with and without the admin
token; each response must be documented (status, content type, body schema), never a 5xx,
and every 4xx must be a JSON error that names the offending field.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
)
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from rankly.engine.serving.app import create_app  # noqa: E402

from ..conftest import make_settings  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "fuzz-admin-token-0123456789"
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
CREDENTIAL_HEADERS = {"authorization", "x-api-key"}
HYPOTHESIS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def fuzz_app(artifacts):
    return create_app(make_settings(artifacts, admin_token=TOKEN))


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


def check_error_names_a_field(response) -> None:
    """Every 4xx is ``{"error": {"field": <non-empty str>, "message": <str>}}``."""
    if 400 <= response.status_code < 500:
        ctype = (response.headers.get("content-type") or [""])[0]
        assert ctype.startswith("application/json"), (response.status_code, ctype)
        error = response.json()["error"]
        assert isinstance(error["field"], str) and error["field"], error
        assert isinstance(error["message"], str) and error["message"], error


@schema.parametrize()
@HYPOTHESIS
def test_api_conforms_to_its_schema_with_the_admin_token(case):
    # with the token every schema-valid request must be accepted (#18: the schema states
    # every constraint the server enforces); tests/engine/serving/test_schemathesis_cli.py adds the
    # negative data, the stateful links and every other check through the CLI
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[*CHECKS, ignored_auth, positive_data_acceptance, response_headers_conformance,
                missing_required_header])
    check_error_names_a_field(response)


@schema.parametrize()
@HYPOTHESIS
def test_api_conforms_to_its_schema_without_credentials(case):
    # schemathesis fills the documented security schemes with generated values; drop them
    case.headers = {k: v for k, v in (case.headers or {}).items()
                    if k.lower() not in CREDENTIAL_HEADERS}
    response = case.call_and_validate(checks=CHECKS)
    check_error_names_a_field(response)
    own_method = case.method.upper() == case.operation.method.upper()  # not a method probe
    if case.operation.definition.raw.get("security") and own_method:
        assert response.status_code == 401, (case.method, case.path, response.status_code)
        assert response.json()["error"]["field"] == "authorization"
