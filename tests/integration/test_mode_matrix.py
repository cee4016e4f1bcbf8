"""The device trust mode matrix, end to end: the real daemon (auth service + SSH node), real certificates from the
real ceremonies, and a real SSH handshake for every cell. The human with a trusted device proves it before every
session (a session certificate from a ceremony bound to the node), as tsh does.

cluster mode {off, optional, required, required-for-humans} x role mode {unset, off, optional, required,
required-for-humans} x identity {human with a trusted device, human without, bot}: 60 cells against one cluster.
The expectation is computed here, independently of :mod:`devicetrust.access`: a device is required when the
strictest of the cluster mode and the role mode (unset ignored; off < optional < required-for-humans < required)
is required, or required-for-humans for a human; then only the human with a trusted device gets in.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncssh
import pytest
from benchmarks.harness import LeanClient
from cryptography.hazmat.primitives.serialization import SSHCertificate, SSHCertificateBuilder, load_ssh_public_identity

from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import issue_ssh_user_cert
from devicetrust.crypto.identity import (
    EXT_DEVICE_ASSET_TAG,
    EXT_DEVICE_CREDENTIAL_ID,
    EXT_DEVICE_ID,
    DeviceExtensions,
    Identity,
    SessionProof,
)
from devicetrust.crypto.keys import generate_private_key, private_key_to_pem
from devicetrust.storage.backend import Backend
from tests.agent.harness import require_root_login
from tests.integration.ceremony_helpers import (
    LOGIN,
    ClientKey,
    NodeInfo,
    SoftwareDevice,
    UserLogin,
    authenticate_device,
    bot_join,
    enroll_software_device,
    put_role,
    run_command,
    set_device_trust,
    signup_and_login,
    wait_for_node,
)
from tests.integration.cluster import PASSWORD, Cluster, start_cluster
from tests.integration.test_cluster_cli import ok

pytestmark = pytest.mark.integration

#: Cluster modes in the order the matrix visits them: each switch flips a probe cell, so the node's pickup of the
#: new mode is observable (off and optional differ only in audit; the switch between them goes through required).
CLUSTER_MODES = ("optional", "required", "required-for-humans", "off")
ROLE_MODES = ("unset", "off", "optional", "required", "required-for-humans")
IDENTITIES = ("human-device", "human-no-device", "bot")
STRICTNESS = {"off": 0, "optional": 1, "required-for-humans": 2, "required": 3}
UNAUTHORIZED_DEVICE = "unauthorized device"
SEED_REJECTION = "ERROR: ssh: rejected: administratively prohibited (unauthorized device)"
#: The node polls its state every 2 s; a new cluster mode must be in force well within this.
MODE_PICKUP_SECONDS = 10.0
AUDIT_WAIT_SECONDS = 10.0
DEVICE_EXTENSIONS = {ext.encode() for ext in (EXT_DEVICE_ID, EXT_DEVICE_ASSET_TAG, EXT_DEVICE_CREDENTIAL_ID)}


def device_required(cluster_mode: str, role_mode: str, identity: str) -> bool:
    modes = [cluster_mode] if role_mode == "unset" else [cluster_mode, role_mode]
    strictest = max(modes, key=STRICTNESS.__getitem__)
    return strictest == "required" or (strictest == "required-for-humans" and identity != "bot")


def expected_allowed(cluster_mode: str, role_mode: str, identity: str) -> bool:
    return not device_required(cluster_mode, role_mode, identity) or identity == "human-device"


def role_name(role_mode: str) -> str:
    return f"mode-{role_mode}"


@dataclass
class Matrix:
    """One running cluster with every identity of the matrix, and the cluster mode its node enforces."""

    cluster: Cluster
    ca_pem: str
    admin_token: str
    node: NodeInfo
    host_ca_ssh: str
    device: SoftwareDevice
    logins: dict[tuple[str, str], UserLogin] = field(default_factory=dict)
    keys: dict[tuple[str, str], ClientKey] = field(default_factory=dict)
    mode: str = "optional"

    @contextmanager
    def admin(self) -> Iterator[LeanClient]:
        """A fresh admin connection: the daemon closes idle keep-alive connections after a few seconds."""
        client = LeanClient(self.cluster.proxy, self.ca_pem, self.admin_token)
        try:
            yield client
        finally:
            client.close()

    def key(self, role_mode: str, identity: str) -> ClientKey:
        """The cell's key and certificate; the device's human gets a fresh session certificate for the node."""
        if identity != "human-device":
            return self.keys[role_mode, identity]
        login = self.logins[role_mode, identity]
        with self.admin() as client:
            user = client.with_token(login.session_token)
            try:
                session_cert = authenticate_device(user, self.device, login.ssh_cert, ("ssh", self.node.host_id))
            except RuntimeError as err:
                # device trust off everywhere for this user: there is nothing to prove (tsh goes on the same way)
                assert "device trust disabled" in str(err), err
                return self.keys[role_mode, identity]
        return login.client_key(session_cert)

    def session(self, key: ClientKey, command: str = "true") -> asyncssh.SSHCompletedProcess:
        """One real SSH connection and exec session; raises what asyncssh raises."""
        return asyncio.run(run_command(self.node, self.host_ca_ssh, key, command))

    def attempt(self, key: ClientKey) -> asyncssh.ChannelOpenError | None:
        """None if ``true`` ran (exit status 0); the channel open error if the node refused the session."""
        try:
            result = self.session(key)
        except asyncssh.ChannelOpenError as err:
            return err
        assert result.exit_status == 0, (result.exit_status, result.stderr)
        return None

    def allowed(self, role_mode: str, identity: str) -> bool:
        """Whether the cell's session starts; a refusal must be for want of a trusted device."""
        refused = self.attempt(self.key(role_mode, identity))
        if refused is not None and refused.reason != UNAUTHORIZED_DEVICE:
            raise AssertionError(f"{role_mode}/{identity} refused: {refused.reason}")
        return refused is None

    def use_cluster_mode(self, mode: str) -> None:
        """Set the cluster mode and wait (bounded) until a probe cell shows the node enforces it."""
        if mode == self.mode:
            return
        probe = _probe(self.mode, mode)
        if probe is None:  # off <-> optional: nothing observable changes, so go through required
            self.use_cluster_mode("required")
            probe = _probe(self.mode, mode)
            assert probe is not None
        with self.admin() as admin:
            set_device_trust(admin, mode)
        want = expected_allowed(mode, "unset", probe)
        deadline = time.monotonic() + MODE_PICKUP_SECONDS
        while self.allowed("unset", probe) != want:
            if time.monotonic() > deadline:
                raise AssertionError(f"the node did not enforce cluster mode {mode} within {MODE_PICKUP_SECONDS} s")
            time.sleep(0.1)
        self.mode = mode

    def wait_until_allowed(self, role_mode: str, identity: str) -> None:
        """Until the node has the role (it refuses the session with another reason before)."""
        deadline = time.monotonic() + MODE_PICKUP_SECONDS
        while self.attempt(self.key(role_mode, identity)) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{role_mode}/{identity} still refused after {MODE_PICKUP_SECONDS} s")
            time.sleep(0.1)


def _probe(old: str, new: str) -> str | None:
    """An identity whose outcome under role mode unset differs between cluster modes ``old`` and ``new``."""
    for identity in ("human-no-device", "bot"):
        if expected_allowed(old, "unset", identity) != expected_allowed(new, "unset", identity):
            return identity
    return None


def _tctl_bot(cluster: Cluster, role_mode: str) -> tuple[str, str]:
    name = f"bot-{role_mode}"
    reply = json.loads(ok(cluster.tctl("bots", "add", name, f"--roles={role_name(role_mode)}", "--format=json")))
    return name, str(reply["token"])


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    require_root_login()
    cluster = start_cluster(tmp_path_factory.mktemp("mode-matrix"))
    identity = json.loads((cluster.root / "data" / "admin" / "identity.json").read_text())
    admin = LeanClient(cluster.proxy, identity["host_ca_pem"], identity["token"])
    anonymous = LeanClient(cluster.proxy, identity["host_ca_pem"])
    try:
        matrix = _setup(cluster, admin, anonymous)
        matrix.ca_pem, matrix.admin_token = identity["host_ca_pem"], identity["token"]
        for mode in ROLE_MODES:  # the node has every role once each grants its device user a session
            matrix.wait_until_allowed(mode, "human-device")
    except BaseException:
        cluster.stop()
        raise
    finally:
        admin.close()
        anonymous.close()
    try:
        yield matrix
    finally:
        cluster.stop()


def _setup(cluster: Cluster, admin: LeanClient, anonymous: LeanClient) -> Matrix:
    set_device_trust(admin, "optional")  # the default mode, now with allow_unsafe_software_keys
    for mode in ROLE_MODES:
        put_role(admin, role_name(mode), None if mode == "unset" else mode)
    # (a): a role requiring a device on nodes labelled env=prod; the cluster's node is env=dev.
    put_role(admin, "prod-required", "required", node_labels={"env": "prod"})
    put_role(admin, "dev-required", "required", node_labels={"env": "dev"})
    with ThreadPoolExecutor(len(ROLE_MODES)) as pool:  # tctl subprocesses, concurrently
        bot_tokens = list(pool.map(lambda mode: _tctl_bot(cluster, mode), ROLE_MODES))
    cas = anonymous.call("GET", "/v1/cas")
    node = wait_for_node(admin)
    logins: dict[tuple[str, str], UserLogin] = {}
    for mode in ROLE_MODES:
        for who in ("human-device", "human-no-device"):
            name = f"{'dev' if who == 'human-device' else 'plain'}-{mode}"
            logins[mode, who] = signup_and_login(admin, anonymous, name, [role_name(mode)], PASSWORD)
    for mode, (bot, token) in zip(ROLE_MODES, bot_tokens, strict=True):
        logins[mode, "bot"] = bot_join(anonymous, bot, token)
    for name, roles in (("alice-prod", ["prod-required", "mode-optional"]), ("alice-dev", ["dev-required"])):
        logins[name, "human-no-device"] = signup_and_login(admin, anonymous, name, roles, PASSWORD)
    # One enrolled device serves every human: device authentication checks the device, not its owner.
    first = logins["unset", "human-device"]
    device = enroll_software_device(
        admin, anonymous.with_token(first.session_token), "SN-MATRIX-1", "matrix-credential-1"
    )
    keys = {cell: login.client_key() for cell, login in logins.items()}
    for mode in ROLE_MODES:
        login = logins[mode, "human-device"]
        augmented = authenticate_device(anonymous.with_token(login.session_token), device, login.ssh_cert)
        cert = load_ssh_public_identity(augmented.encode())
        assert isinstance(cert, SSHCertificate) and set(cert.extensions) >= DEVICE_EXTENSIONS
        keys[mode, "human-device"] = login.client_key(augmented)
    return Matrix(cluster, "", "", node, cas["host_ca_ssh"], device, logins, keys)


# ------------------------------------------------------------------------------------------------- the matrix
CELLS = [
    pytest.param(cluster_mode, role_mode, identity, id=f"cluster={cluster_mode}/role={role_mode}/{identity}")
    for cluster_mode in CLUSTER_MODES
    for role_mode in ROLE_MODES
    for identity in IDENTITIES
]


@pytest.mark.parametrize(("cluster_mode", "role_mode", "identity"), CELLS)
def test_mode_matrix(matrix: Matrix, cluster_mode: str, role_mode: str, identity: str) -> None:
    matrix.use_cluster_mode(cluster_mode)
    refused = matrix.attempt(matrix.key(role_mode, identity))
    if expected_allowed(cluster_mode, role_mode, identity):
        assert refused is None, f"refused: {refused and refused.reason}"
    else:
        assert isinstance(refused, asyncssh.ChannelOpenError), "a device was required but the session started"
        assert refused.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        assert refused.reason == UNAUTHORIZED_DEVICE


def test_the_matrix_expectation_itself() -> None:
    """The oracle above, spot-checked by hand against docs/architecture.md, Enforcement."""
    assert device_required("optional", "required", "bot")
    assert not device_required("required-for-humans", "off", "bot")
    assert device_required("off", "required-for-humans", "human-no-device")
    assert device_required("required-for-humans", "required", "bot")  # required is stricter, exempts nobody
    assert not device_required("off", "unset", "human-no-device")
    assert device_required("required", "off", "bot")  # a lax role does not relax the cluster
    assert sum(expected_allowed(*cell.values) for cell in CELLS) == 60 - 22  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ audit (e)
def _session_start(matrix: Matrix, user: str, session_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + AUDIT_WAIT_SECONDS
    while True:
        out = ok(matrix.cluster.tctl("audit", "ls", "--type=session.start", f"--user={user}", "--format=json"))
        found = [event for event in json.loads(out) if event.get("session_id") == session_id]
        if found:
            return dict(found[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"no session.start for session {session_id} of {user}")
        time.sleep(0.2)


def _session_id(matrix: Matrix, key: ClientKey) -> str:
    result = matrix.session(key, 'printf %s "$DEVICETRUST_SESSION_ID"')
    assert result.exit_status == 0, result.stderr
    return str(result.stdout)


def test_session_start_audit_names_the_device_unless_trust_is_off(matrix: Matrix) -> None:
    device = matrix.device
    expected = {
        "asset_tag": device.asset_tag,
        "device_id": device.device_id,
        "os": "Linux",
        "credential_id": device.credential_id,
    }
    matrix.use_cluster_mode("off")
    # cluster off, role off: a device-verified session, but nothing device-related in audit
    quiet = _session_start(matrix, "dev-off", _session_id(matrix, matrix.key("off", "human-device")))
    assert quiet["success"] is True and "device" not in quiet, quiet
    # cluster off, role optional: the effective mode is optional, so the device is named
    named = _session_start(matrix, "dev-optional", _session_id(matrix, matrix.key("optional", "human-device")))
    assert named["device"] == expected, named
    # cluster off, role required
    named = _session_start(matrix, "dev-required", _session_id(matrix, matrix.key("required", "human-device")))
    assert named["device"] == expected, named


def test_login_time_device_values_alone_open_no_session_that_requires_a_device(matrix: Matrix) -> None:
    """What a copied profile holds: the login certificate with the device values from login. It names the device
    in tsh status and in optional-mode audit, but where a device is required only a session proof opens."""
    matrix.use_cluster_mode("optional")
    login_only = matrix.keys["required", "human-device"]
    refused = matrix.attempt(login_only)
    assert refused is not None and (refused.code, refused.reason) == (
        asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
        UNAUTHORIZED_DEVICE,
    )
    # optional: it opens, and the audit names the login-time device
    named = _session_start(matrix, "dev-optional", _session_id(matrix, matrix.keys["optional", "human-device"]))
    assert named["device"]["device_id"] == matrix.device.device_id and "device_proof" not in named, named
    # a session certificate for this node opens the required one, and its proof is in the audit
    proven = _session_start(matrix, "dev-required", _session_id(matrix, matrix.key("required", "human-device")))
    assert proven["device"]["device_id"] == matrix.device.device_id and proven["device_proof"]["id"], proven


# ------------------------------------------------------------------------------------------- (a) node labels
def test_a_required_role_that_does_not_match_the_node_requires_nothing_there(matrix: Matrix) -> None:
    with matrix.admin() as admin:
        nodes = admin.call("GET", "/v1/nodes")["items"]
    node = next(item for item in nodes if item["host_id"] == matrix.node.host_id)
    assert node["labels"].get("env") == "dev", node["labels"]
    if matrix.mode not in ("off", "optional"):
        matrix.use_cluster_mode("optional")
    # roles prod-required (env=prod, mode required) + mode-optional ('*': '*'): only the latter grants this node
    assert matrix.attempt(matrix.keys["alice-prod", "human-no-device"]) is None
    # the control: the same required role on env=dev does require a device here
    refused = matrix.attempt(matrix.keys["alice-dev", "human-no-device"])
    assert refused is not None and (refused.code, refused.reason) == (
        asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
        UNAUTHORIZED_DEVICE,
    )


# ------------------------------------------------------------------------------------- (b), (c) forged certs
def _identity(device: DeviceExtensions | None, roles: tuple[str, ...], proof_for: str | None = None) -> Identity:
    now = datetime.now(UTC)
    proof = None
    if proof_for is not None:
        proof = SessionProof(kind="ssh", target=proof_for, time=now, expires=now + timedelta(minutes=1), id="forged")
    return Identity(
        username="dev-required",
        roles=roles,
        logins=(LOGIN,),
        traits={},
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
        device=device,
        session_proof=proof,
    )


def _device_extensions(matrix: Matrix) -> DeviceExtensions:
    d = matrix.device
    return DeviceExtensions(device_id=d.device_id, asset_tag=d.asset_tag, credential_id=d.credential_id)


def _cluster_user_ca(matrix: Matrix) -> CertAuthority:
    backend = Backend.open(f"sqlite:///{matrix.cluster.root / 'data' / 'backend.sqlite'}")
    try:
        with backend.begin() as store:
            record = store.cas.get("user")
    finally:
        backend.close()
    assert record is not None
    return CertAuthority.from_record(record)


def _client_key(key: Any, cert_line: bytes) -> ClientKey:
    return asyncssh.import_private_key(private_key_to_pem(key)), asyncssh.import_certificate(cert_line)


def test_a_cert_from_another_user_ca_is_rejected_at_authentication(matrix: Matrix) -> None:
    other = CertAuthority.generate("user", "test.cluster", datetime.now(UTC))  # same cluster name, another key
    key = generate_private_key()
    identity = _identity(_device_extensions(matrix), (role_name("unset"),))
    forged = issue_ssh_user_cert(other, key.public_key(), identity)
    with pytest.raises(asyncssh.PermissionDenied):
        matrix.session(_client_key(key, forged))
    # the control: the very same identity from the cluster's user CA gets a session
    genuine = issue_ssh_user_cert(_cluster_user_ca(matrix), key.public_key(), identity)
    assert matrix.attempt(_client_key(key, genuine)) is None


def _reissue(ca: CertAuthority, cert_line: bytes, drop: str, *, empty: bool) -> bytes:
    """``cert_line`` signed again by ``ca`` with extension ``drop`` removed (or present with an empty value)."""
    cert = load_ssh_public_identity(cert_line)
    assert isinstance(cert, SSHCertificate)
    builder = (
        SSHCertificateBuilder()
        .public_key(cert.public_key())
        .serial(cert.serial)
        .type(cert.type)
        .key_id(cert.key_id)
        .valid_principals(cert.valid_principals)
        .valid_after(cert.valid_after)
        .valid_before(cert.valid_before)
    )
    for name, value in cert.extensions.items():
        if name == drop.encode():
            if empty:
                builder = builder.add_extension(name, b"")
            continue
        builder = builder.add_extension(name, value)
    return builder.sign(ca.private_key).public_bytes()


@pytest.mark.parametrize(
    ("drop", "empty"),
    [
        pytest.param("", False, id="all-three"),
        pytest.param(EXT_DEVICE_ID, False, id="no-device-id"),
        pytest.param(EXT_DEVICE_ASSET_TAG, False, id="no-asset-tag"),
        pytest.param(EXT_DEVICE_CREDENTIAL_ID, False, id="no-credential-id"),
        pytest.param(EXT_DEVICE_ASSET_TAG, True, id="empty-asset-tag"),
    ],
)
def test_a_cluster_cert_missing_a_device_value_is_unverified(matrix: Matrix, drop: str, empty: bool) -> None:
    ca = _cluster_user_ca(matrix)
    key = generate_private_key()
    # role mode-required: a device is required whatever the cluster mode
    identity = _identity(_device_extensions(matrix), ("mode-required",), proof_for=matrix.node.host_id)
    cert = issue_ssh_user_cert(ca, key.public_key(), identity)
    if drop:
        cert = _reissue(ca, cert, drop, empty=empty)
    refused = matrix.attempt(_client_key(key, cert))
    if not drop:
        assert refused is None, refused and refused.reason
        return
    assert refused is not None, "a certificate missing a device value passed as device-verified"
    assert (refused.code, refused.reason) == (asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, UNAUTHORIZED_DEVICE)


# ----------------------------------------------------------------------------------------------- (d) tsh ssh
def test_tsh_ssh_rejected_without_a_device_then_admitted_after_enrolling(matrix: Matrix) -> None:
    cluster = matrix.cluster
    matrix.use_cluster_mode("required")
    cluster.signup_and_login("tsh-dana", roles=role_name("unset"))
    target = f"{LOGIN}@{matrix.node.hostname}"
    rejected = cluster.tsh("tsh-dana", "ssh", target, "true")
    assert rejected.returncode != 0
    assert rejected.stderr.strip() == SEED_REJECTION, rejected.stderr

    asset_tag = "SN-MATRIX-TSH"
    env = cluster.env(TSH_HOME=str(cluster.home("tsh-dana")), DEVICETRUST_ASSET_TAG=asset_tag)
    ok(cluster.tctl("devices", "add", "--os=linux", f"--asset-tag={asset_tag}"))
    enroll = ok(cluster.tctl("devices", "enroll", f"--asset-tag={asset_tag}")).strip().splitlines()[1]
    token = enroll.split("--token=", 1)[1]
    enrolled = cluster.run("tsh", "device", "enroll", "--device-key=unsafe-software", f"--token={token}", env=env)
    assert ok(enrolled).strip() == f'Device "{asset_tag}"/Linux enrolled'
    login = cluster.run(
        "tsh", "login", "--device-key=unsafe-software", "--password-stdin", input=PASSWORD + "\n", env=env
    )
    ok(login)
    admitted = cluster.run("tsh", "ssh", target, 'echo "$DEVICETRUST_SESSION_ID"', env=env)
    session_id = ok(admitted).strip()
    assert session_id, admitted.stderr
    # cluster mode required: the session.start event names the device
    event = _session_start(matrix, "tsh-dana", session_id)
    assert event["device"]["asset_tag"] == asset_tag and event["device"]["os"] == "Linux", event
