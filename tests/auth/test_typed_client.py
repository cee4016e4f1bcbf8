"""The typed client against the real service: methods return the protocol's models, path segments stay one."""

from __future__ import annotations

import httpx
import pytest
from tests.auth.api_harness import RunningApi

from devicetrust.client import AuthApi, segment
from devicetrust.errors import DevicetrustError, NotFoundError
from devicetrust.protocol import PingResponse, WhoamiResponse


def typed_client(api: RunningApi) -> AuthApi:
    client = AuthApi("127.0.0.1", insecure=True)
    client._http.close()
    client._http = httpx.Client(base_url=api.base_url, headers={"authorization": f"Bearer {api.admin_token}"})
    return client


def test_methods_return_protocol_models(api: RunningApi) -> None:
    with typed_client(api) as client:
        assert isinstance(client.ping(), PingResponse)
        who = client.whoami()
        assert isinstance(who, WhoamiResponse) and who.kind == "admin"
        created = client.create_user("alice", ["access"], {"logins": ["alice"]})
        assert created.user == "alice" and created.invite_token
        assert [token.type for token in client.list_tokens().items] == ["signup"]
        assert "alice" in [d["metadata"]["name"] for d in client.list_resources("user").items]


def test_a_name_with_url_syntax_in_it_is_one_path_segment(api: RunningApi) -> None:
    assert segment("x/unenroll?y=%") == "x%2Funenroll%3Fy%3D%25"
    assert (segment("."), segment("..")) == ("%2E", "%2E%2E")
    with typed_client(api) as client, pytest.raises(NotFoundError) as refused:
        # unquoted, this would ask for device "x" with a query string
        client.get_device("x?page_size=1")
    assert "x?page_size=1" in str(refused.value)


def test_a_reply_of_another_shape_is_one_line_error(api: RunningApi) -> None:
    with typed_client(api) as client:
        client.get = lambda path, **params: {"cluster_name": "c"}  # type: ignore[method-assign]
        with pytest.raises(DevicetrustError, match=r"^the auth service sent an unexpected reply to ping \(server_"):
            client.ping()
