"""End to end: the daemon, tctl and tsh as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.integration.cluster import PASSWORD, Cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED_ROLE = ROOT / "examples" / "require-trusted-device.yaml"
SEED_CAP = ROOT / "examples" / "cluster-auth-preference.yaml"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI")
        pytest.skip(f"{name} not installed")
    return path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # Informational notices (such as trusting a CA on first use) may precede it; the error is one line, last.
    errors = [line for line in lines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def host_ca(cluster: Cluster) -> str:
    return json.loads((cluster.root / "data" / "admin" / "identity.json").read_text())["host_ca_pem"]


def test_https_with_host_ca_ping_and_openapi(cluster: Cluster) -> None:
    context = ssl.create_default_context(cadata=host_ca(cluster))
    with httpx.Client(base_url=f"https://{cluster.proxy}", verify=context) as client:
        ping = client.get("/v1/ping")
        assert ping.status_code == 200
        body = ping.json()
        assert body["cluster_name"] == "test.cluster"
        assert body["auth"]["device_trust"] == {
            "mode": "optional",
            "auto_enroll": False,
            "session_proof": "per_session",
            "session_proof_ttl": "1m",
        }
        assert ping.headers["x-request-id"]
        schema = client.get("/v1/openapi.json").json()
        assert "/v1/ping" in schema["paths"] and "/v1/login" in schema["paths"]
        too_big = client.post("/v1/login", content=b"x" * (2 * 1024 * 1024))
        assert too_big.status_code == 413
        unauthenticated = client.get("/v1/whoami")
        assert unauthenticated.status_code == 401
        assert "tsh login" in unauthenticated.json()["error"]["message"]
    # A client trusting only public roots must refuse the cluster's certificate.
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=True) as public:
        public.get(f"https://{cluster.proxy}/v1/ping")


def test_admin_identity_is_private(cluster: Cluster) -> None:
    identity = cluster.root / "data" / "admin" / "identity.json"
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600


def test_logs_are_json_with_request_id(cluster: Cluster) -> None:
    ok(cluster.tctl("status"))
    lines = [json.loads(line) for line in cluster.log_path.read_text().splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry.get("message") == "request"]
    assert requests
    assert all(entry["request_id"] and entry["status"] for entry in requests)
    assert all(PASSWORD not in json.dumps(entry) for entry in lines)


def test_signup_login_status_and_certificates(cluster: Cluster) -> None:
    status = cluster.signup_and_login("alice", roles="access", logins="alice,root")
    assert status["user"] == "alice"
    assert status["roles"] == ["access"]
    assert status["logins"] == ["alice", "root"]
    assert "teleport-roles" in status["extensions"]  # type: ignore[operator]
    text = ok(cluster.tsh("alice", "status"))
    assert "Logged in as:   alice" in text
    assert "Logins:         alice, root" in text
    assert "Extensions:" in text

    keys = cluster.home("alice") / "keys" / cluster.proxy
    assert stat.S_IMODE((keys / "alice").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "alice.session").stat().st_mode) == 0o600

    listing = ok(
        subprocess.run(
            [require_tool("ssh-keygen"), "-L", "-f", str(keys / "alice-cert.pub")],
            capture_output=True,
            text=True,
            check=False,
        )
    )
    assert 'Key ID: "alice"' in listing
    assert "alice" in listing and "root" in listing
    assert "teleport-roles" in listing
    openssl = require_tool("openssl")
    x509_text = ok(
        subprocess.run(
            [openssl, "x509", "-text", "-noout", "-in", str(keys / "alice-x509.pem")],
            capture_output=True,
            text=True,
            check=False,
        )
    )
    assert "CN=alice" in x509_text.replace(" = ", "=")
    ca_file = cluster.root / "user-ca.pem"
    profile = json.loads((cluster.home("alice") / "profiles" / f"{cluster.proxy}.json").read_text())
    ca_file.write_text(profile["user_ca_pem"])
    verified = ok(
        subprocess.run(
            [
                openssl,
                "verify",
                "-CAfile",
                str(ca_file),
                "-purpose",
                "sslclient",
                str(keys / "alice-x509.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    )
    assert verified.strip().endswith("OK")
    # The SSH and X.509 certificates share NotAfter.
    tls_cert = x509.load_pem_x509_certificate((keys / "alice-x509.pem").read_bytes())
    assert tls_cert.not_valid_after_utc == datetime.fromisoformat(str(status["valid_until"])).replace(microsecond=0)


def test_ttl_flag_and_cap(cluster: Cluster) -> None:
    cluster.signup_and_login("ttl-user")
    status = json.loads(
        ok(
            cluster.tsh(
                "ttl-user",
                "login",
                f"--proxy={cluster.proxy}",
                "--user=ttl-user",
                "--ttl=2h",
                "--password-stdin",
                "--format=json",
                input=PASSWORD,
            )
        )
    )
    remaining = datetime.fromisoformat(status["valid_until"]) - datetime.now(UTC)
    assert 1.9 * 3600 < remaining.total_seconds() <= 2 * 3600
    status = json.loads(
        ok(cluster.tsh("ttl-user", "login", "--ttl=100h", "--password-stdin", "--format=json", input=PASSWORD))
    )
    remaining = datetime.fromisoformat(status["valid_until"]) - datetime.now(UTC)
    assert remaining.total_seconds() <= 30 * 3600
    assert "--ttl" in one_line_error(cluster.tsh("ttl-user", "login", "--ttl=soon", "--password-stdin", input=PASSWORD))


def test_cli_errors_name_the_flags_the_auth_service_does_not(cluster: Cluster, tmp_path: Path) -> None:
    assert (
        one_line_error(cluster.tctl("tokens", "add", "--type=x"))
        == "ERROR: --type: expected one of node, db, kube, mdm, got 'x'"
    )
    assert (
        one_line_error(cluster.tctl("tokens", "add", "--type=node", "--ttl=169h"))
        == "ERROR: --ttl must be at most 7 days"
    )
    assert "--ttl must be at most 7 days" in one_line_error(
        cluster.tctl("bots", "add", "b", "--roles=access", "--ttl=169h")
    )
    assert "at least one role is required (--roles)" in one_line_error(cluster.tctl("users", "add", "u", "--roles=,"))
    assert "(--set-roles)" in one_line_error(cluster.tctl("users", "update", "u", "--set-roles=,"))
    short = cluster.tsh("nobody", "login", f"--proxy={cluster.proxy}", "--user=nobody", "--ttl=30s")
    assert one_line_error(short) == "ERROR: --ttl must be at least 1 minute"
    # --force overwrites neither a lock nor anything else it cannot: no hint to use it there.
    lock = tmp_path / "lock.yaml"
    lock.write_text("kind: lock\nversion: v2\nmetadata:\n  name: flag-lock\nspec:\n  target:\n    user: nobody\n")
    ok(cluster.tctl("create", "-f", str(lock)))
    again = one_line_error(cluster.tctl("create", "-f", str(lock)))
    assert 'lock "flag-lock" already exists' in again and "--force" not in again


def test_seed_role_create_force_and_user_update(cluster: Cluster, tmp_path: Path) -> None:
    cluster.signup_and_login("carol", logins="carol")
    # The seed's role is also a preset: applying it verbatim succeeds without a change.
    created = ok(cluster.tctl("create", "-f", str(SEED_ROLE)))
    assert 'role "require-trusted-device" already exists with this content' in created
    changed = tmp_path / "changed.yaml"
    changed.write_text(SEED_ROLE.read_text().replace("- developers", "- platform"))
    again = one_line_error(cluster.tctl("create", "-f", str(changed)))
    assert "already exists" in again and "--force" in again
    assert 'role "require-trusted-device" has been updated' in ok(cluster.tctl("create", "-f", str(changed), "--force"))
    ok(cluster.tctl("create", "-f", str(SEED_ROLE), "--force"))
    ok(cluster.tctl("users", "update", "carol", "--set-roles=access,require-trusted-device"))
    ok(cluster.login("carol"))
    status = json.loads(ok(cluster.tsh("carol", "status", "--format=json")))
    assert status["roles"] == ["access", "require-trusted-device"]
    roles = ok(cluster.tctl("get", "roles", "--format=yaml"))
    for name in ("access", "editor", "auditor", "device-admin", "device-enroll", "require-trusted-device"):
        assert f"name: {name}" in roles
    assert "device_trust_mode: required" in roles
    missing = one_line_error(cluster.tctl("users", "update", "carol", "--set-roles=nope"))
    assert 'role "nope" not found' in missing


def test_edit_cluster_auth_preference(cluster: Cluster, tmp_path: Path) -> None:
    editor = f"cp {SEED_CAP}"
    out = ok(cluster.tctl("edit", "cluster_auth_preference", EDITOR=editor))
    assert "has been updated" in out
    cap = json.loads(ok(cluster.tctl("get", "cap", "--format=json")))
    assert cap[0]["spec"]["device_trust"]["mode"] == "required"
    assert cap[0]["spec"]["webauthn"] == {"rp_id": "example.teleport.sh"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED_CAP.read_text().replace('mode: "required"', 'mode: "sometimes"'))
    error = one_line_error(cluster.tctl("edit", "cap", EDITOR=f"cp {bad}"))
    assert "spec.device_trust.mode" in error
    unchanged = ok(cluster.tctl("edit", "cap", EDITOR="true"))
    assert "no changes" in unchanged
    cap = json.loads(ok(cluster.tctl("get", "cap", "--format=json")))
    assert cap[0]["spec"]["device_trust"]["mode"] == "required"
    ping = json.loads(ok(cluster.tctl("status", "--format=json")))
    assert ping["auth"]["device_trust"]["mode"] == "required"
    # Put the default back for the other tests.
    restore = tmp_path / "optional.yaml"
    restore.write_text(SEED_CAP.read_text().replace('mode: "required"', 'mode: "optional"'))
    ok(cluster.tctl("create", "-f", str(restore)))


def test_create_rejects_bad_documents(cluster: Cluster, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: role\nversion: v7\nmetadata:\n  name: x\nspec:\n  allow: [\n")
    assert "line" in one_line_error(cluster.tctl("create", "-f", str(broken)))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("kind: role\nversion: v7\nmetadata:\n  name: x\nspec:\n  allow:\n    nodelabels: {}\n")
    assert "spec.allow.nodelabels" in one_line_error(cluster.tctl("create", "-f", str(unknown)))
    wrong_version = tmp_path / "v3.yaml"
    wrong_version.write_text("kind: role\nversion: v3\nmetadata:\n  name: x\nspec: {}\n")
    assert "version" in one_line_error(cluster.tctl("create", "-f", str(wrong_version)))
    assert "cannot read" in one_line_error(cluster.tctl("create", "-f", str(tmp_path / "absent.yaml")))


def test_bots_tokens_and_bot_login(cluster: Cluster) -> None:
    reply = json.loads(ok(cluster.tctl("bots", "add", "robot", "--roles=access", "--logins=robot", "--format=json")))
    status = json.loads(
        ok(
            cluster.tsh(
                "robot",
                "login",
                f"--proxy={cluster.proxy}",
                "--bot",
                f"--token={reply['token']}",
                "--format=json",
            )
        )
    )
    assert status["user"] == "bot-robot"
    assert status["bot_name"] == "robot"
    assert "teleport-bot-name" in status["extensions"]
    reused = one_line_error(
        cluster.tsh("robot2", "login", f"--proxy={cluster.proxy}", "--bot", f"--token={reply['token']}")
    )
    assert "invalid or expired bot join token" in reused
    assert "robot" in ok(cluster.tctl("bots", "ls"))

    token = json.loads(ok(cluster.tctl("tokens", "add", "--type=node", "--format=json")))
    assert token["type"] == "node" and len(token["token"]) >= 43
    listed = json.loads(ok(cluster.tctl("tokens", "ls", "--format=json")))
    node_tokens = [t for t in listed if t["type"] == "node"]
    assert node_tokens and token["token"] not in json.dumps(listed)
    ok(cluster.tctl("tokens", "rm", node_tokens[0]["id"]))
    assert "--type" in one_line_error(cluster.tctl("tokens", "add", "--type=spaceship"))


def test_wrong_password_is_audited_and_rate_limited(cluster: Cluster) -> None:
    cluster.signup_and_login("mallory-target")
    for _ in range(5):
        error = one_line_error(cluster.login("mallory-target", "wrong password!"))
        assert error == "ERROR: invalid username or password"
    limited = one_line_error(cluster.login("mallory-target"))
    assert "too many failed login attempts" in limited
    unknown = one_line_error(cluster.login("nobody-at-all", "whatever password"))
    assert unknown == "ERROR: invalid username or password"
    events = json.loads(
        ok(cluster.tctl("audit", "ls", "--since=1h", "--type=user.login", "--format=json", "--limit=1000"))
    )
    failures = [e for e in events if e["user"] == "mallory-target" and not e["success"]]
    assert len(failures) >= 6
    assert {e["code"] for e in failures} == {"T1000W"}


def test_rbac_through_the_users_own_profile(cluster: Cluster) -> None:
    cluster.signup_and_login("dave")
    denied = one_line_error(cluster.tctl_as("dave", "users", "add", "eve", "--roles=access"))
    assert 'missing permission "create" on "user"' in denied
    assert 'on "event"' in one_line_error(cluster.tctl_as("dave", "audit", "ls"))
    # An editor may administer through their own profile.
    cluster.signup_and_login("erin", roles="editor")
    ok(cluster.tctl_as("erin", "users", "add", "frank", "--roles=access"))


def test_logout_ends_the_session_on_the_server(cluster: Cluster) -> None:
    cluster.signup_and_login("gina", roles="editor")
    token = (cluster.home("gina") / "keys" / cluster.proxy / "gina.session").read_text()
    ok(cluster.tctl_as("gina", "get", "roles"))
    assert "Logged out gina" in ok(cluster.tsh("gina", "logout"))
    assert not (cluster.home("gina") / "keys" / cluster.proxy / "gina").exists()
    context = ssl.create_default_context(cadata=host_ca(cluster))
    with httpx.Client(base_url=f"https://{cluster.proxy}", verify=context) as client:
        assert client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert "tsh login" in one_line_error(cluster.tctl_as("gina", "get", "roles"))
    assert "Not logged in" in ok(cluster.tsh("gina", "logout"))


def test_pinned_ca_change_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    cluster.signup_and_login("henry")
    known = cluster.home("henry") / "known_cas.json"
    pins = json.loads(known.read_text())
    other = Path(cluster.root / "tsh" / "alice" / "profiles" / f"{cluster.proxy}.json")
    pins[cluster.proxy] = json.loads(other.read_text())["user_ca_pem"]  # a different CA than the host CA
    known.write_text(json.dumps(pins))
    refused = one_line_error(cluster.login("henry"))
    assert "pinned cluster CA" in refused and "--trust-new-ca" in refused
    ok(cluster.tsh("henry", "login", "--trust-new-ca", "--password-stdin", input=PASSWORD))


def test_unreachable_server_and_expired_profile(cluster: Cluster, tmp_path: Path) -> None:
    env = cluster.env(TSH_HOME=str(tmp_path / "tsh"))
    error = one_line_error(
        cluster.run("tsh", "login", "--proxy=127.0.0.1:1", "--user=x", "--password-stdin", input="x", env=env)
    )
    assert "cannot reach the auth service at 127.0.0.1:1" in error
    assert "not logged in" in one_line_error(cluster.run("tsh", "status", env=env))
    assert "tsh login" in one_line_error(cluster.run("tctl", "get", "roles", env=env))


def test_audit_ls_filters_and_json(cluster: Cluster) -> None:
    cluster.signup_and_login("ivan")
    events = json.loads(ok(cluster.tctl("audit", "ls", "--since=1h", "--format=json", "--limit=1000")))
    kinds = {e["event"] for e in events}
    assert {"user.create", "user.login", "cert.create", "user.password_change"} <= kinds
    ivan = json.loads(ok(cluster.tctl("audit", "ls", "--user=ivan", "--type=user.login", "--format=json")))
    assert ivan and all(e["user"] == "ivan" and e["event"] == "user.login" for e in ivan)
    assert all(e["code"] == "T1000I" and e["success"] for e in ivan)
    future = json.loads(ok(cluster.tctl("audit", "ls", "--until=2h", "--since=3h", "--format=json")))
    assert future == []


def test_edit_cannot_change_the_kind(cluster: Cluster, tmp_path: Path) -> None:
    as_role = tmp_path / "as-role.yaml"
    as_role.write_text("kind: role\nversion: v7\nmetadata:\n  name: cluster-auth-preference\nspec: {}\n")
    error = one_line_error(cluster.tctl("edit", "cap", EDITOR=f"cp {as_role}"))
    assert "kind cannot change ('cluster_auth_preference' -> 'role')" in error
    assert "not found" in one_line_error(cluster.tctl("get", "role/cluster-auth-preference"))


def test_create_validates_every_document_before_applying_any(cluster: Cluster, tmp_path: Path) -> None:
    role = "kind: role\nversion: v7\nmetadata:\n  name: {name}\nspec:\n  allow:\n    logins: [{login}]\n"
    bad_late = tmp_path / "bad-late.yaml"
    bad_late.write_text(
        role.format(name="batch-one", login="a") + "---\n" + role.format(name="batch-two", login="a") + "  nope: 1\n"
    )
    error = one_line_error(cluster.tctl("create", "-f", str(bad_late)))
    assert error.startswith(f"ERROR: {bad_late}: document 2: ") and "nothing was applied" in error
    assert "not found" in one_line_error(cluster.tctl("get", "role/batch-one"))
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text(role.format(name="batch-one", login="a") + "---\n" + role.format(name="batch-one", login="b"))
    error = one_line_error(cluster.tctl("create", "-f", str(repeated)))
    assert 'document 2: role "batch-one" is also document 1 (nothing was applied)' in error
    assert "not found" in one_line_error(cluster.tctl("get", "role/batch-one"))
    # What only the server can refuse (here: overwriting without --force) names what was applied before it.
    ok(cluster.tctl("create", "-f", "-", input=role.format(name="batch-two", login="a")))
    conflict = tmp_path / "conflict.yaml"
    conflict.write_text(role.format(name="batch-one", login="a") + "---\n" + role.format(name="batch-two", login="b"))
    error = one_line_error(cluster.tctl("create", "-f", str(conflict)))
    assert f'{conflict}: document 2 (role "batch-two"): ' in error and "already exists" in error
    assert '(applied before it: role "batch-one" created; nothing after it)' in error


def test_create_refuses_non_utf8_and_alias_bombs_in_one_line(cluster: Cluster, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("kind: role\nversion: v7\nmetadata:\n  name: caf\xe9\n".encode("latin-1"))
    assert one_line_error(cluster.tctl("create", "-f", str(latin1))) == (
        f"ERROR: {latin1}: line 4: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    )
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("kind: role\n" + "\n".join(lines) + "\n")
    assert "once aliases are expanded" in one_line_error(cluster.tctl("create", "-f", str(bomb)))


def test_names_cannot_reroute_requests(cluster: Cluster) -> None:
    cluster.add_user("victim")
    assert 'invalid name "../user/victim"' in one_line_error(cluster.tctl("rm", "role/../user/victim"))
    assert 'invalid name ".."' in one_line_error(cluster.tctl("get", "role/.."))
    assert "invalid name" in one_line_error(cluster.tctl("users", "rm", "../resources/role/access"))
    # Ids that are not resource names are quoted, never resolved as paths.
    assert one_line_error(cluster.tctl("tokens", "rm", "..")) == 'ERROR: token ".." not found'
    one_line_error(cluster.tctl("tokens", "rm", "../resources/user/victim"))
    assert "victim" in ok(cluster.tctl("users", "ls"))
    assert "access" in ok(cluster.tctl("get", "role/access"))


def test_device_enroll_ttl_error_names_the_flag_typed(cluster: Cluster) -> None:
    ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=TTL-FLAG-1"))
    error = one_line_error(cluster.tctl("devices", "enroll", "--asset-tag=TTL-FLAG-1", "--ttl=169h"))
    assert "--ttl must be positive and at most 7 days" in error and "--enroll-ttl" not in error
    error = one_line_error(
        cluster.tctl("devices", "add", "--os=linux", "--asset-tag=TTL-FLAG-2", "--enroll", "--enroll-ttl=169h")
    )
    assert "--enroll-ttl must be positive and at most 7 days" in error


def test_ca_export_fingerprints_and_cert_authority_resources(cluster: Cluster, tmp_path: Path) -> None:
    ssh_keygen = require_tool("ssh-keygen")
    user_line = ok(cluster.tctl("auth", "export", "--type=user")).strip()
    host_line = ok(cluster.tctl("auth", "export", "--type=host")).strip()
    assert user_line.startswith("cert-authority ecdsa-sha2-nistp256 AAAA")
    assert user_line.endswith(" clustername=test.cluster&type=user")
    assert host_line.startswith("@cert-authority * ecdsa-sha2-nistp256 AAAA")
    assert ok(cluster.tctl("auth", "export")).splitlines() == [user_line, host_line]
    # What an admin writes for a plain sshd (TrustedUserCAKeys), for authorized_keys and for known_hosts.
    trusted_user_ca = tmp_path / "teleport_user_ca.pub"
    trusted_user_ca.write_text(user_line.removeprefix("cert-authority ") + "\n")
    authorized_keys = tmp_path / "authorized_keys"
    authorized_keys.write_text(user_line + "\n")
    host_ca_key = tmp_path / "host_ca.pub"
    host_ca_key.write_text(host_line.removeprefix("@cert-authority * ") + "\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host_line + "\n")

    def ssh_keygen_run(*args: str) -> str:
        return ok(subprocess.run([ssh_keygen, *args], capture_output=True, text=True, check=False))

    assert "found: line 1 CA" in ssh_keygen_run("-F", "node-1.example.com", "-f", str(known_hosts))
    fingerprints = {}
    for name, path in (("user", trusted_user_ca), ("user", authorized_keys), ("host", host_ca_key)):
        listed = ssh_keygen_run("-l", "-f", str(path))
        assert listed.startswith("256 SHA256:") and listed.rstrip().endswith("(ECDSA)"), listed
        assert fingerprints.setdefault(name, listed.split()[1]) == listed.split()[1]
    assert fingerprints["user"] != fingerprints["host"]
    status = ok(cluster.tctl("status"))
    assert f"User CA:       {fingerprints['user']}\n" in status
    assert f"Host CA:       {fingerprints['host']}\n" in status
    assert json.loads(ok(cluster.tctl("status", "--format=json")))["cas"]["host_ca"] == fingerprints["host"]

    tls = ok(cluster.tctl("auth", "export", "--type=tls"))
    assert tls.strip() == host_ca(cluster).strip()
    exported = tmp_path / "cluster-ca.pem"
    exported.write_text(tls)
    openssl_fingerprint = ok(
        subprocess.run(
            [require_tool("openssl"), "x509", "-noout", "-fingerprint", "-sha256", "-in", str(exported)],
            capture_output=True,
            text=True,
            check=False,
        )
    )
    assert f"Host CA (TLS): SHA256 {openssl_fingerprint.strip().split('=', 1)[1]}\n" in status + "\n"
    assert x509.load_pem_x509_certificate(ok(cluster.tctl("auth", "export", "--type=tls-user")).encode())

    cas = json.loads(ok(cluster.tctl("get", "cert_authority", "--format=json")))
    assert [(ca["kind"], ca["metadata"]["name"]) for ca in cas] == [
        ("cert_authority", "user"),
        ("cert_authority", "host"),
    ]
    assert cas[0]["spec"]["active_keys"]["ssh"][0]["public_key"].split()[:2] == user_line.split()[1:3]
    everything = ok(cluster.tctl("get", "cas", "--format=yaml")) + ok(cluster.tctl("get", "cert_authority/host"))
    assert "PRIVATE" not in everything and "private" not in everything
    assert "cannot be deleted" in one_line_error(cluster.tctl("rm", "cert_authority/user"))
