"""The device's side of session-time proof: before a session, the enrolled device answers a challenge bound to
the session's target and the auth service returns a session certificate for it.

The session certificate certifies the profile's own key; what makes it worth anything is the proof inside it,
which only the device's TPM or Secure Enclave can obtain and which admits a session to one target for a short
window (the cluster's ``session_proof_ttl``). A copied ``$TSH_HOME`` therefore opens nothing that requires a
device: its copy of the device state names a key that lives in hardware it does not have.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from devicetrust.ceremony.messages import Challenge
from devicetrust.cli.profile import Profile, ProfileStore, session_client
from devicetrust.client import AuthApi
from devicetrust.crypto.certs import identity_from_ssh_cert
from devicetrust.crypto.identity import SessionProof
from devicetrust.device.collect import collect
from devicetrust.device.device_key import DeviceKey
from devicetrust.device.keys import BACKENDS, default_backend, open_device_key
from devicetrust.errors import DevicetrustError, ValidationError
from devicetrust.protocol import ChallengeMessage, NodeInfo, SessionTarget
from devicetrust.types import SESSION_PROOF_LOGIN

__all__ = [
    "ENV_DEVICE_KEY",
    "PendingSessionProof",
    "SessionCertificate",
    "begin_node_proof",
    "begin_session_proof",
    "chosen_backend",
    "device_state_dir",
    "enrolled_backend",
    "prove_for_session",
    "wants_session_proof",
]

#: Default device key backend for scripts (same values as --device-key).
ENV_DEVICE_KEY = "DEVICETRUST_DEVICE_KEY"


@dataclass(frozen=True)
class SessionCertificate:
    """A session certificate pair for one target, and the proof it carries."""

    ssh_cert: bytes
    tls_cert_pem: str
    proof: SessionProof


def device_state_dir(store: ProfileStore) -> Path:
    return store.home / "device"


def chosen_backend(preferred: str | None = None) -> str:
    """The device key backend to use: ``preferred`` (``--device-key``), else ``$DEVICETRUST_DEVICE_KEY``, else the
    platform's hardware."""
    if preferred:
        return preferred
    from_env = os.environ.get(ENV_DEVICE_KEY)
    if not from_env:
        return default_backend()
    if from_env not in BACKENDS:
        raise ValidationError(f"{ENV_DEVICE_KEY}: expected one of {', '.join(BACKENDS)}, got {from_env!r}")
    return from_env


def enrolled_backend(store: ProfileStore, preferred: str | None = None) -> str | None:
    """The key backend this tsh home enrolled a device with: ``preferred`` (or ``$DEVICETRUST_DEVICE_KEY``, or the
    platform's hardware) when it holds a credential, else the one backend that does; None if none does."""
    state = device_state_dir(store)
    choice = chosen_backend(preferred)
    candidates = [choice, *(name for name in BACKENDS if name != choice)]
    for name in candidates:
        if (state / f"{name}.credential-id").exists():
            return name
    return None


def wants_session_proof(profile: Profile) -> bool:
    """Whether sessions should be preceded by a device proof: device trust is in use for this login and the
    cluster does not rely on login-time device values alone."""
    return profile.device_trust and profile.session_proof != SESSION_PROOF_LOGIN


def prove_for_session(
    store: ProfileStore,
    profile: Profile,
    kind: str,
    target: str,
    *,
    backend: str | None = None,
    client: AuthApi | None = None,
) -> SessionCertificate:
    """Run the device authentication ceremony bound to ``kind``/``target`` and return the session certificate.
    ``client``: an open connection to the auth service to reuse (one TLS handshake less per session).
    Raises DevicetrustError (one line) when the device cannot prove itself."""
    return begin_session_proof(store, profile, kind, target, backend=backend, client=client).finish()


def begin_session_proof(
    store: ProfileStore,
    profile: Profile,
    kind: str,
    target: str,
    *,
    backend: str | None = None,
    client: AuthApi | None = None,
) -> PendingSessionProof:
    """Begin the device authentication ceremony bound to ``kind``/``target``: the auth service's challenge is in,
    the device has not answered yet (:meth:`PendingSessionProof.finish`). Raises DevicetrustError (one line)."""
    return _begin(store, profile, SessionTarget.model_construct(kind=kind, id=target), backend, client)


def begin_node_proof(
    store: ProfileStore,
    profile: Profile,
    name: str,
    *,
    backend: str | None = None,
    client: AuthApi | None = None,
) -> tuple[NodeInfo, PendingSessionProof]:
    """:func:`begin_session_proof` for the SSH node the user calls ``name``, which the auth service resolves: that
    node, and the begun ceremony bound to its host id. Raises DevicetrustError (one line); NotFoundError when no
    node, or several, carry the name."""
    target = SessionTarget.model_construct(kind="ssh", id=name, by_name=True)
    pending = _begin(store, profile, target, backend, client)
    node = pending.node
    if node is None or not node.host_id:
        pending.close()
        raise DevicetrustError("the auth service did not say which node the session proof is for")
    pending.target = ("ssh", node.host_id)
    return node, pending


def _begin(
    store: ProfileStore, profile: Profile, target: SessionTarget, backend: str | None, client: AuthApi | None
) -> PendingSessionProof:
    chosen = enrolled_backend(store, backend)
    if chosen is None:
        raise DevicetrustError("this device is not enrolled (tsh device enroll)")
    login_cert = store.ssh_cert_path(profile).read_text()
    collected = collect()
    resources = contextlib.ExitStack()
    try:
        api = client if client is not None else resources.enter_context(session_client(store, profile))
        key = resources.enter_context(open_device_key(chosen, device_state_dir(store)))
        begin = api.authenticate_begin(
            credential_id=key.credential_id(),
            device_data=collected.to_dict(),
            ssh_cert=login_cert,
            target=target,
        )
    except BaseException:
        resources.close()
        raise
    return PendingSessionProof(resources, api, key, begin, (target.kind, target.id))


class PendingSessionProof:
    """A begun device ceremony for one session. ``finish`` (once, from any one thread) answers the challenge with
    the device key and returns the session certificate for ``target``; ``node`` is the node the auth service resolved
    (when the ceremony named one)."""

    def __init__(
        self,
        resources: contextlib.ExitStack,
        client: AuthApi,
        key: DeviceKey,
        begin: ChallengeMessage,
        target: tuple[str, str],
    ) -> None:
        self._resources = resources
        self._client = client
        self._key = key
        self._begin = begin
        self.target = target
        self.node: NodeInfo | None = begin.node

    def finish(self) -> SessionCertificate:
        with self._resources:
            challenge = Challenge.from_json(self._begin.model_dump())
            answer = self._key.answer_authentication(challenge)
            reply = self._client.authenticate_finish(answer.to_json())
        ssh_cert = reply.ssh_cert.strip().encode() + b"\n"
        proof = identity_from_ssh_cert(ssh_cert).session_proof
        if proof is None or (proof.kind, proof.target) != self.target:
            raise DevicetrustError("the auth service returned a session certificate for another target")
        return SessionCertificate(ssh_cert, reply.tls_cert, proof)

    def close(self) -> None:
        """Give up the ceremony without answering (the device key is closed; the challenge expires unused)."""
        self._resources.close()
