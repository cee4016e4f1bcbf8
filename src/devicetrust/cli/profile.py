"""tsh's on-disk state: profiles, keys and certificates, and the pinned cluster CAs.

Layout under ``$TSH_HOME`` (default ``~/.tsh``)::

    current-profile                 proxy address of the active profile
    known_cas.json                  proxy -> host CA PEM, pinned on first use; survives logout
    profiles/<proxy>.json           user, cluster, CA public keys (no secrets)
    keys/<proxy>/<user>             private key (0600)
    keys/<proxy>/<user>.pub         OpenSSH public key
    keys/<proxy>/<user>-cert.pub    SSH user certificate
    keys/<proxy>/<user>-x509.pem    X.509 client certificate
    keys/<proxy>/<user>.session     API session token (0600)
    keys/<proxy>/<user>-sessions/   session certificates for OpenSSH, one per node (tsh config)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from devicetrust.client import AuthApi
from devicetrust.errors import SessionExpiredError, ValidationError
from devicetrust.files import write_atomic

ENV_TSH_HOME = "TSH_HOME"


def tsh_home() -> Path:
    return Path(os.environ.get(ENV_TSH_HOME) or Path.home() / ".tsh")


def _safe_component(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", "..") or "\0" in value:
        raise ValidationError(f"invalid {what} {value!r}")
    return value


@dataclass(frozen=True)
class Profile:
    proxy: str
    user: str
    cluster_name: str
    kind: str  # "user" | "bot"
    user_ca_ssh: str
    user_ca_pem: str
    host_ca_ssh: str
    #: from the login reply: whether device trust is in use for this user, and the cluster's session_proof
    device_trust: bool = True
    session_proof: str = "per_session"

    @property
    def url(self) -> str:
        return f"https://{self.proxy}"


class ProfileStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or tsh_home()

    # --------------------------------------------------------------------------------------- pinned CAs
    def _known_cas_path(self) -> Path:
        return self.home / "known_cas.json"

    def pinned_ca(self, proxy: str) -> str | None:
        path = self._known_cas_path()
        if not path.exists():
            return None
        known: dict[str, str] = json.loads(path.read_text())
        return known.get(proxy)

    def pin_ca(self, proxy: str, ca_pem: str) -> None:
        path = self._known_cas_path()
        known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        known[proxy] = ca_pem
        write_atomic(path, json.dumps(known, indent=2).encode(), 0o600)

    # ----------------------------------------------------------------------------------------- profiles
    def key_dir(self, proxy: str) -> Path:
        return self.home / "keys" / _safe_component(proxy, "proxy address")

    def key_path(self, proxy: str, user: str) -> Path:
        return self.key_dir(proxy) / _safe_component(user, "user name")

    def current(self) -> Profile | None:
        marker = self.home / "current-profile"
        if not marker.exists():
            return None
        return self.load(marker.read_text().strip())

    def require_current(self) -> Profile:
        profile = self.current()
        if profile is None:
            raise SessionExpiredError("not logged in; run 'tsh login --proxy=HOST:PORT --user=NAME'")
        return profile

    def load(self, proxy: str) -> Profile | None:
        path = self.home / "profiles" / f"{_safe_component(proxy, 'proxy address')}.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        known = {field.name for field in fields(Profile)}
        return Profile(**{key: value for key, value in data.items() if key in known})

    def save(
        self,
        profile: Profile,
        *,
        private_key_pem: bytes,
        public_key_openssh: str,
        ssh_cert: str,
        tls_cert_pem: str,
        session_token: str,
    ) -> None:
        base = self.key_path(profile.proxy, profile.user)
        write_atomic(base, private_key_pem, 0o600)
        write_atomic(base.with_name(base.name + ".pub"), (public_key_openssh + "\n").encode(), 0o644)
        write_atomic(base.with_name(base.name + "-cert.pub"), ssh_cert.rstrip().encode() + b"\n", 0o644)
        write_atomic(base.with_name(base.name + "-x509.pem"), tls_cert_pem.encode(), 0o644)
        write_atomic(base.with_name(base.name + ".session"), session_token.encode(), 0o600)
        profiles = self.home / "profiles" / f"{profile.proxy}.json"
        write_atomic(profiles, json.dumps(asdict(profile), indent=2).encode(), 0o600)
        write_atomic(self.home / "current-profile", profile.proxy.encode(), 0o600)

    def ssh_cert_path(self, profile: Profile) -> Path:
        base = self.key_path(profile.proxy, profile.user)
        return base.with_name(base.name + "-cert.pub")

    def tls_cert_path(self, profile: Profile) -> Path:
        base = self.key_path(profile.proxy, profile.user)
        return base.with_name(base.name + "-x509.pem")

    def session_token(self, profile: Profile) -> str:
        base = self.key_path(profile.proxy, profile.user)
        path = base.with_name(base.name + ".session")
        if not path.exists():
            raise SessionExpiredError("not logged in; run 'tsh login'")
        return path.read_text().strip()

    def remove(self, profile: Profile) -> None:
        """Forget the keys and the profile; the pinned CA stays, like known_hosts."""
        base = self.key_path(profile.proxy, profile.user)
        for suffix in ("", ".pub", "-cert.pub", "-x509.pem", ".session"):
            base.with_name(base.name + suffix).unlink(missing_ok=True)
        (self.home / "profiles" / f"{profile.proxy}.json").unlink(missing_ok=True)
        marker = self.home / "current-profile"
        if marker.exists() and marker.read_text().strip() == profile.proxy:
            marker.unlink()
        key_dir = self.key_dir(profile.proxy)
        if key_dir.exists() and not any(key_dir.iterdir()):
            shutil.rmtree(key_dir)


def session_client(store: ProfileStore, profile: Profile) -> AuthApi:
    """An API client for the profile's auth service, authenticated by its session token."""
    return AuthApi(profile.proxy, ca_pem=store.pinned_ca(profile.proxy), token=store.session_token(profile))
