"""Session certificates from the auth service (DeviceService, no HTTP): a software-key device, a real SQLite
backend, a frozen clock. What the service issues, to whom, for which target, and what it refuses."""

from __future__ import annotations

import base64
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.auth.server_harness import PASSWORD, Clock, make_server, public_key

from devicetrust.auth.devices import NodeByName
from devicetrust.auth.server import Caller
from devicetrust.ceremony.messages import CeremonyError, ChallengeResponse, CollectedData, KeyEnrollPayload
from devicetrust.crypto.certs import identity_from_ssh_cert
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh
from devicetrust.errors import NotFoundError
from devicetrust.storage.backend import Backend

SERIAL = "SN-SESSION-1"
NODE = ("ssh", "0b6c3f1e-7d0e-4a57-9a43-2d0c3e9b8f11")


class World:
    def __init__(self, backend: Backend) -> None:
        self.clock = Clock()
        self.server = make_server(backend, self.clock)
        self.admin = self.server.authenticate(self.server.issue_admin_identity("host-a"))
        cap = self.server.get_resource(self.admin, "cap", "cluster-auth-preference")
        cap["spec"]["device_trust"] = {"mode": "required", "allow_unsafe_software_keys": True}
        self.server.put_resource(self.admin, cap, force=True)
        self.device_key = ec.generate_private_key(ec.SECP256R1())
        self.collected = CollectedData(collect_time=self.clock.now.isoformat(), os_type="linux", serial_number=SERIAL)

    def user(self, name: str) -> tuple[Caller, bytes]:
        _, invite = self.server.create_user(self.admin, name, ["access"], {"logins": ["alice"]})
        self.server.signup(invite, PASSWORD)
        key = generate_private_key()
        result = self.server.login(name, PASSWORD, public_key_to_openssh(key.public_key()), None)
        return self.server.authenticate(result.session_token), result.ssh_cert

    def enroll(self, owner: Caller) -> None:
        _device, token = self.server.devices.add(self.admin, "linux", SERIAL, create_token=True)
        assert token is not None
        public_der = self.device_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        challenge = self.server.devices.enroll_begin(
            token=token,
            caller=owner,
            credential_id="cred-1",
            collected=self.collected,
            tpm=None,
            key=KeyEnrollPayload.from_json(
                {"public_key_der": base64.b64encode(public_der).decode(), "attestation_type": "unsafe_software"}
            ),
        )
        self.server.devices.enroll_finish(self.answer(challenge.ceremony_id, challenge.challenge))

    def answer(self, ceremony_id: str, challenge: bytes) -> ChallengeResponse:
        signature = self.device_key.sign(challenge, ec.ECDSA(hashes.SHA256()))
        return ChallengeResponse(ceremony_id, signature=signature)

    def begin(self, caller: Caller, ssh_cert: bytes, target: tuple[str, str] | None = NODE) -> tuple[str, bytes]:
        challenge = self.server.devices.authenticate_begin(
            caller, credential_id="cred-1", collected=self.collected, ssh_cert=ssh_cert, target=target
        )
        return challenge.ceremony_id, challenge.challenge


@pytest.fixture
def world(backend: Backend) -> World:
    return World(backend)


def test_a_session_certificate_carries_the_device_and_a_proof_for_its_target(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    ceremony_id, challenge = world.begin(alice, login_cert)
    certs = world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, challenge))

    login = identity_from_ssh_cert(login_cert)
    session = identity_from_ssh_cert(certs.ssh_cert)
    assert session.device is not None and session.device.asset_tag == SERIAL
    proof = session.session_proof
    assert proof is not None and (proof.kind, proof.target) == NODE
    assert uuid.UUID(proof.id).version == 4 and proof.id not in ceremony_id  # the sealed state's own id
    assert proof.time == world.clock.now.replace(microsecond=0)
    assert proof.expires - proof.time == timedelta(minutes=1)  # the cluster's session_proof_ttl
    # the same identity as the login certificate, for no longer
    assert (session.username, session.roles, session.logins) == (login.username, login.roles, login.logins)
    assert session.not_after == login.not_after
    events = world.server.search_events(
        world.admin, since=None, until=None, event_types=["device.authenticate"], user=None, limit=10, after_id=None
    )
    assert events[-1]["target"] == {"kind": "ssh", "id": NODE[1]} and events[-1]["proof"]["id"] == proof.id


def test_the_window_follows_the_cluster_setting(world: World) -> None:
    cap = world.server.get_resource(world.admin, "cap", "cluster-auth-preference")
    cap["spec"]["device_trust"]["session_proof_ttl"] = "15s"
    world.server.put_resource(world.admin, cap, force=True)
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    certs = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, login_cert)))
    proof = identity_from_ssh_cert(certs.ssh_cert).session_proof
    assert proof is not None and proof.expires - proof.time == timedelta(seconds=15)


def test_a_session_certificate_cannot_seed_another_proof(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    certs = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, login_cert)))
    with pytest.raises(CeremonyError, match="session certificate"):
        world.begin(alice, certs.ssh_cert)


def test_another_users_finish_does_not_spend_the_owners_ceremony(world: World) -> None:
    alice, login_cert = world.user("alice")
    mallory, _ = world.user("mallory")
    world.enroll(alice)
    ceremony_id, challenge = world.begin(alice, login_cert)
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        world.server.devices.authenticate_finish(mallory, world.answer(ceremony_id, challenge))
    # the owner's ceremony is intact
    certs = world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, challenge))
    assert identity_from_ssh_cert(certs.ssh_cert).username == "alice"
    failures = [
        e
        for e in world.server.search_events(
            world.admin, since=None, until=None, event_types=["device.authenticate"], user=None, limit=10, after_id=None
        )
        if not e["success"]
    ]
    assert failures[-1]["user"] == "mallory" and failures[-1]["reason"] == "ceremony belongs to another user"
    # and a replay by the owner finds nothing left
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, challenge))


def test_a_login_time_augmentation_still_needs_an_unaugmented_certificate(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    augmented = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, login_cert, None)))
    assert identity_from_ssh_cert(augmented.ssh_cert).session_proof is None
    with pytest.raises(CeremonyError, match="already carries device extensions"):
        world.begin(alice, augmented.ssh_cert, None)
    # a device-augmented login certificate may still seed session proofs (what tsh holds after login)
    certs = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, augmented.ssh_cert)))
    assert identity_from_ssh_cert(certs.ssh_cert).session_proof is not None


def test_concurrent_finishes_of_one_ceremony_yield_one_session_certificate(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    ceremony_id, challenge = world.begin(alice, login_cert)
    answer = world.answer(ceremony_id, challenge)
    barrier = threading.Barrier(8)

    def finish() -> str:
        barrier.wait()
        try:
            world.server.devices.authenticate_finish(alice, answer)
        except CeremonyError as err:
            return str(err)
        return "issued"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: finish(), range(8)))
    assert outcomes.count("issued") == 1, outcomes
    assert set(outcomes) - {"issued"} == {"unknown or expired device ceremony"}


def test_a_wrong_answer_spends_the_ceremony(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    ceremony_id, challenge = world.begin(alice, login_cert)
    with pytest.raises(CeremonyError):
        world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, b"not the challenge"))
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, challenge))


def test_a_tampered_or_foreign_ceremony_id_is_refused(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    ceremony_id, challenge = world.begin(alice, login_cert)
    flipped = ceremony_id[:20] + ("A" if ceremony_id[20] != "A" else "B") + ceremony_id[21:]
    for forged in (flipped, ceremony_id + "A", str(uuid.uuid4())):
        with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
            world.server.devices.authenticate_finish(alice, world.answer(forged, challenge))
    world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, challenge))  # still good


def test_a_ceremony_expires_after_a_minute(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    ceremony_id, challenge = world.begin(alice, login_cert)
    world.clock.now += timedelta(seconds=61)
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        world.server.devices.authenticate_finish(alice, world.answer(ceremony_id, challenge))


def test_only_database_and_kubernetes_session_certificates_carry_x509(world: World) -> None:
    alice, login_cert = world.user("alice")
    world.enroll(alice)
    ssh = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, login_cert)))
    assert ssh.tls_cert is None
    for target in (("db", "orders"), ("kube", "prod")):
        certs = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, login_cert, target)))
        assert certs.tls_cert is not None
    login = world.server.devices.authenticate_finish(alice, world.answer(*world.begin(alice, login_cert, None)))
    assert login.tls_cert is not None


# --------------------------------------------------------------------------------- a node named by the user
def _join_node(world: World, hostname: str, labels: dict[str, str]) -> str:
    token, _ = world.server.create_join_token(world.admin, "node", None)
    return str(world.server.nodes.join(token, hostname, "127.0.0.1:3022", labels, public_key(), "node")["host_id"])


def _begin_by_name(world: World, token: str, ssh_cert: bytes, name: str) -> tuple[ChallengeResponse, dict[str, Any]]:
    """Begin a session proof for the node called ``name``: the device's answer, and the node the service chose."""
    _, challenge, node = world.server.devices.authenticate_begin_as(
        token, credential_id="cred-1", collected=world.collected, ssh_cert=ssh_cert, target=NodeByName(name)
    )
    assert node is not None
    return world.answer(challenge.ceremony_id, challenge.challenge), node


def _login(world: World, name: str) -> tuple[Caller, str, bytes]:
    result = world.server.login(name, PASSWORD, public_key(), None)
    return world.server.authenticate(result.session_token), result.session_token, result.ssh_cert


@pytest.mark.parametrize("name", ["web", "web.unit.test", "host id"])
def test_a_node_named_by_the_user_is_resolved_and_the_proof_bound_to_its_host_id(world: World, name: str) -> None:
    web = _join_node(world, "web", {"env": "prod"})
    _join_node(world, "db", {"env": "prod"})
    world.user("alice")
    alice, token, login_cert = _login(world, "alice")
    world.enroll(alice)
    answer, node = _begin_by_name(world, token, login_cert, web if name == "host id" else name)
    assert (node["host_id"], node["hostname"], node["addr"]) == (web, "web", "127.0.0.1:3022")
    _, certs = world.server.devices.authenticate_finish_as(token, answer)
    proof = identity_from_ssh_cert(certs.ssh_cert).session_proof
    assert proof is not None and (proof.kind, proof.target) == ("ssh", web)


def test_a_name_resolves_only_among_the_nodes_the_user_may_reach(world: World) -> None:
    role = {
        "kind": "role",
        "version": "v7",
        "metadata": {"name": "prod-only"},
        "spec": {"allow": {"logins": ["alice"], "node_labels": {"env": "prod"}}},
    }
    world.server.put_resource(world.admin, role, force=False)
    _, invite = world.server.create_user(world.admin, "alice", ["prod-only"], {})
    world.server.signup(invite, PASSWORD)
    alice, token, login_cert = _login(world, "alice")
    world.enroll(alice)
    prod = _join_node(world, "web", {"env": "prod"})
    _join_node(world, "web", {"env": "dev"})  # the same name, out of alice's reach: not ambiguous for her
    _join_node(world, "staging", {"env": "dev"})
    assert _begin_by_name(world, token, login_cert, "web")[1]["host_id"] == prod
    with pytest.raises(NotFoundError, match=r'^no node named "staging" \(see tsh ls\)$'):
        _begin_by_name(world, token, login_cert, "staging")


def test_an_ambiguous_or_unknown_name_begins_nothing(world: World) -> None:
    first = _join_node(world, "web", {})
    second = _join_node(world, "web", {})
    world.user("alice")
    alice, token, login_cert = _login(world, "alice")
    world.enroll(alice)
    with pytest.raises(NotFoundError, match=r'several nodes are named "web"; give one of their host ids') as err:
        _begin_by_name(world, token, login_cert, "web")
    assert first in str(err.value) and second in str(err.value)
    with pytest.raises(NotFoundError, match=r'^no node named "nowhere" \(see tsh ls\)$'):
        _begin_by_name(world, token, login_cert, "nowhere")
    events = world.server.search_events(
        world.admin, since=None, until=None, event_types=["device.authenticate"], user=None, limit=10, after_id=None
    )
    assert events == []  # a name the user mistyped is not a device failure
