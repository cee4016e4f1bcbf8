"""The cluster itself: first-start bootstrap (name, CAs, preset roles, auth preference) and what it tells anyone
about itself (ping, CAs, the auth server's TLS certificate)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypedDict

from cryptography import x509

from devicetrust import __version__
from devicetrust.auth.context import CAP_KIND, CAP_NAME, RES_CERT_AUTHORITY, RES_ROLE, AuthContext
from devicetrust.ceremony.sealed import SEAL_KEY_BYTES
from devicetrust.crypto.ca import CA_KINDS, CertAuthority
from devicetrust.crypto.certs import issue_tls_server_cert
from devicetrust.errors import ConfigError
from devicetrust.protocol import ResourceDocument
from devicetrust.storage.repositories import CLUSTER_NAME_KEY
from devicetrust.types import default_cluster_auth_preference, preset_roles, resource_to_dict

TLS_CERT_TTL = timedelta(days=365)
#: Backdating absorbs small clock differences between the auth server and nodes.
CERT_BACKDATE = timedelta(minutes=1)
#: The cluster key/value entry holding the key that seals pending device-authentication ceremonies.
CEREMONY_KEY_NAME = "ceremony_seal_key"


class DeviceTrustSummary(TypedDict):
    mode: str
    auto_enroll: bool
    session_proof: str
    session_proof_ttl: str


class AuthSummary(TypedDict):
    type: str
    second_factors: list[str]
    device_trust: DeviceTrustSummary


class PingSummary(TypedDict):
    """What ``/v1/ping`` tells anyone (:class:`devicetrust.protocol.PingResponse`)."""

    cluster_name: str
    server_version: str
    auth: AuthSummary


class ClusterService:
    def __init__(self, context: AuthContext) -> None:
        self.context = context
        self._configured_cluster_name = context.cluster_name

    def initialize(self) -> None:
        """First-start work, safe to repeat and to race with another auth server on the same backend."""
        context = self.context
        context.backend.migrate()
        now = context.clock()
        with context.backend.begin() as store:
            stored = store.cluster.insert_if_absent(CLUSTER_NAME_KEY, self._configured_cluster_name)
            if stored != self._configured_cluster_name:
                raise ConfigError(
                    f"the backend belongs to cluster {stored!r}, not {self._configured_cluster_name!r} "
                    "(auth_service.cluster_name cannot change after the first start)"
                )
            context.cluster_name = stored
            cas: dict[str, CertAuthority] = {}
            for kind in CA_KINDS:
                candidate = CertAuthority.generate(kind, stored, now)
                record = store.cas.insert_if_absent(kind, candidate.to_record())
                cas[kind] = CertAuthority.from_record(record)
            for role in preset_roles():
                if store.resources.find(RES_ROLE, role.metadata.name) is None:
                    store.resources.create(RES_ROLE, role.metadata.name, resource_to_dict(role))
            if store.resources.find(CAP_KIND, CAP_NAME) is None:
                store.resources.create(CAP_KIND, CAP_NAME, resource_to_dict(default_cluster_auth_preference()))
            ceremony_key = store.cluster.insert_if_absent(CEREMONY_KEY_NAME, secrets.token_hex(SEAL_KEY_BYTES))
        context.ceremony_key = bytes.fromhex(ceremony_key)
        context.user_ca = cas["user"]
        context.host_ca = cas["host"]

    def issue_tls_server_cert(
        self, public_key: Any, dns_names: Sequence[str], ip_addresses: Sequence[str]
    ) -> x509.Certificate:
        now = self.context.clock()
        return issue_tls_server_cert(
            self.context.host_ca, public_key, dns_names, ip_addresses, now - CERT_BACKDATE, now + TLS_CERT_TTL
        )

    def ping(self) -> PingSummary:
        cap = self.context.auth_preference()
        return {
            "cluster_name": self.context.cluster_name,
            "server_version": __version__,
            "auth": {
                "type": cap.type,
                "second_factors": list(cap.second_factors),
                "device_trust": {
                    "mode": cap.device_trust.mode,
                    "auto_enroll": cap.device_trust.auto_enroll,
                    "session_proof": cap.device_trust.session_proof,
                    "session_proof_ttl": cap.device_trust.session_proof_ttl,
                },
            },
        }

    def cert_authority_documents(self) -> list[ResourceDocument]:
        """The cluster's CAs as resources: public halves only (anyone may fetch them from /v1/cas)."""
        return [
            {
                "kind": RES_CERT_AUTHORITY,
                "version": "v2",
                "metadata": {"name": ca.kind},
                "spec": {
                    "type": ca.kind,
                    "cluster_name": ca.cluster_name,
                    "active_keys": {
                        "ssh": [{"public_key": ca.ssh_public_key()}],
                        "tls": [{"cert": ca.certificate_pem().decode()}],
                    },
                },
            }
            for ca in (self.context.user_ca, self.context.host_ca)
        ]
