"""The auth service's domain logic, free of HTTP: users, roles, bots, tokens, certificates, audit.

Every public method that acts for somebody takes the :class:`Caller` and checks its permissions first. State
lives in the backend only, so any number of ``AuthServer`` instances over one database are interchangeable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devicetrust import __version__
from devicetrust import audit as events
from devicetrust.access import AccessChecker
from devicetrust.auth.devices import RES_DEVICE, DeviceService, parse_lock
from devicetrust.auth.nodes import NodeService
from devicetrust.auth.parsing import parse_stored
from devicetrust.auth.secrets import hash_token, new_token, token_id
from devicetrust.crypto import (
    CA_KINDS,
    CertAuthority,
    Identity,
    issue_ssh_user_cert,
    issue_tls_server_cert,
    issue_x509_client_cert,
    load_public_key,
)
from devicetrust.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    AuthenticationError,
    ConfigError,
    NotFoundError,
    RateLimitedError,
    SessionExpiredError,
    ValidationError,
)
from devicetrust.storage import CLUSTER_NAME_KEY, Backend, Store
from devicetrust.types import (
    SESSION_PROOF_PER_SESSION,
    Bot,
    ClusterAuthPreference,
    Device,
    Lock,
    Resource,
    Role,
    User,
    default_cluster_auth_preference,
    locks_in_force,
    normalize_kind,
    parse_resource,
    preset_roles,
    resource_to_dict,
)

log = logging.getLogger(__name__)

_R = TypeVar("_R", Role, User, Bot, ClusterAuthPreference)

#: Certificates last 12 h unless asked otherwise (Teleport's default) and never longer than 30 h.
DEFAULT_CERT_TTL = timedelta(hours=12)
MAX_CERT_TTL = timedelta(hours=30)
MIN_CERT_TTL = timedelta(minutes=1)
#: Backdating absorbs small clock differences between the auth server and nodes.
CERT_BACKDATE = timedelta(minutes=1)
#: A signup (invite) link is good for one hour, like Teleport's.
INVITE_TTL = timedelta(hours=1)
DEFAULT_BOT_TOKEN_TTL = timedelta(hours=1)
DEFAULT_JOIN_TOKEN_TTL = timedelta(minutes=30)
MAX_TOKEN_TTL = timedelta(days=7)
#: Login failures allowed per user per window before further attempts are refused outright.
MAX_LOGIN_FAILURES = 5
LOGIN_FAILURE_WINDOW = timedelta(minutes=10)
#: Login failures allowed from one client address per window, whatever user names it tries.
MAX_LOGIN_FAILURES_PER_ADDRESS = 20
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
#: The local admin identity tctl uses on the auth host; rotated at every start.
ADMIN_IDENTITY_TTL = timedelta(days=365)
ADMIN_ROLES = ("editor", "auditor", "device-admin")
TLS_CERT_TTL = timedelta(days=365)
JOIN_TOKEN_TYPES = ("node", "db", "kube", "mdm")
BOT_USER_PREFIX = "bot-"

CAP_KIND = "cluster_auth_preference"
CAP_NAME = "cluster-auth-preference"

# RBAC resource names used in role rules.
RES_USER = "user"
RES_ROLE = "role"
RES_BOT = "bot"
RES_TOKEN = "token"
RES_CAP = CAP_KIND
RES_EVENT = "event"
RES_LOCK = "lock"
RES_CERT_AUTHORITY = "cert_authority"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Caller:
    """Who is calling, with the roles in force right now (re-read at every request)."""

    name: str
    kind: str  # "user" | "bot" | "admin"
    roles: tuple[Role, ...]
    traits: Mapping[str, tuple[str, ...]]
    session_hash: str = ""
    bot_name: str | None = None
    checker: AccessChecker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checker", AccessChecker(self.roles, self.traits))

    def check(self, resource: str, verb: str) -> None:
        self.checker.check_rule(resource, verb)

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(role.metadata.name for role in self.roles)


@dataclass(frozen=True)
class LoginResult:
    session_token: str
    identity: Identity
    ssh_cert: bytes
    tls_cert: x509.Certificate
    #: whether tsh should run device authentication next (cluster or role mode not off)
    device_trust_enabled: bool = False
    auto_enroll: bool = False
    #: the cluster's session_proof setting: tsh proves the device before each session unless it is "login"
    session_proof: str = SESSION_PROOF_PER_SESSION


class AuthServer:
    def __init__(
        self,
        backend: Backend,
        *,
        cluster_name: str,
        clock: Callable[[], datetime] = utcnow,
        password_hasher: PasswordHasher | None = None,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self._configured_cluster_name = cluster_name
        self.cluster_name = cluster_name
        # Argon2id with the library's RFC 9106 low-memory profile.
        self._hasher = password_hasher or PasswordHasher()
        # Verified against when the user is unknown, so both paths cost the same.
        self._dummy_hash = self._hasher.hash("devicetrust-dummy-password")
        self.user_ca: CertAuthority
        self.host_ca: CertAuthority
        self.devices = DeviceService(self)
        self.nodes = NodeService(self)

    # ----------------------------------------------------------------------------------------------- start up
    def initialize(self) -> None:
        """First-start work, safe to repeat and to race with another auth server on the same backend."""
        self.backend.migrate()
        now = self.clock()
        with self.backend.begin() as store:
            stored = store.cluster.insert_if_absent(CLUSTER_NAME_KEY, self._configured_cluster_name)
            if stored != self._configured_cluster_name:
                raise ConfigError(
                    f"the backend belongs to cluster {stored!r}, not {self._configured_cluster_name!r} "
                    "(auth_service.cluster_name cannot change after the first start)"
                )
            self.cluster_name = stored
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
        self.user_ca = cas["user"]
        self.host_ca = cas["host"]

    def issue_admin_identity(self, host: str | None = None, *, replaces: str | None = None) -> str:
        """A fresh token for the local admin (tctl on this host). ``replaces``, the token this server wrote at its
        previous start, is revoked; the tokens of other auth servers on the same backend, even on hosts of the same
        name, stay valid."""
        subject = f"admin@{host or socket.gethostname()}"
        token = new_token()
        with self.backend.begin() as store:
            if replaces:
                with contextlib.suppress(NotFoundError):
                    previous = store.sessions.get_valid(hash_token(replaces), self.clock())
                    if previous.kind == "admin":
                        store.sessions.delete(previous.token_hash)
            store.sessions.create(
                hash_token(token),
                subject,
                "admin",
                {"roles": list(ADMIN_ROLES)},
                self.clock() + ADMIN_IDENTITY_TTL,
            )
        return token

    def issue_tls_server_cert(
        self, public_key: Any, dns_names: Sequence[str], ip_addresses: Sequence[str]
    ) -> x509.Certificate:
        now = self.clock()
        return issue_tls_server_cert(
            self.host_ca, public_key, dns_names, ip_addresses, now - CERT_BACKDATE, now + TLS_CERT_TTL
        )

    # -------------------------------------------------------------------------------------- authentication
    def authenticate(self, token: str) -> Caller:
        """Resolve a bearer token to a caller. One message for every failure: nothing to learn from it."""
        expired = SessionExpiredError("your session has expired or is not valid; run 'tsh login'")
        if not token:
            raise expired
        token_hash = hash_token(token)
        with self.backend.begin() as store:
            try:
                session = store.sessions.get_valid(token_hash, self.clock())
            except NotFoundError:
                raise expired from None
            if session.kind == "node":
                return Caller(session.user, "node", (), {}, token_hash)
            if session.kind == "mdm":
                return Caller(session.user, "mdm", (), {}, token_hash)
            if session.kind == "admin":
                roles = self._load_roles(store, session.body.get("roles", []))
                return Caller(session.user, "admin", roles, {}, token_hash)
            if session.kind == "bot":
                bot_name = str(session.body["bot"])
                record = store.resources.find(RES_BOT, bot_name)
                if record is None:
                    raise expired
                bot = _parse(record.body, Bot)
                return Caller(
                    session.user,
                    "bot",
                    self._load_roles(store, bot.roles),
                    bot.traits,
                    token_hash,
                    bot_name=bot_name,
                )
            user_record = store.users.find(session.user)
            if user_record is None:
                raise expired
            user = _parse(user_record.body, User)
            return Caller(user.metadata.name, "user", self._load_roles(store, user.roles), user.traits, token_hash)

    def _load_roles(self, store: Store, names: Sequence[str]) -> tuple[Role, ...]:
        roles = []
        for name in names:
            record = store.resources.find(RES_ROLE, name)
            if record is None:
                # A role deleted after assignment grants nothing; failing the whole request would lock admins out.
                log.warning("role %r assigned but missing; ignoring it", name)
                continue
            roles.append(_parse(record.body, Role))
        return tuple(roles)

    def login(
        self,
        username: str,
        password: str,
        public_key_text: str,
        ttl: timedelta | None,
        *,
        client_addr: str | None = None,
    ) -> LoginResult:
        public_key = load_public_key(public_key_text)
        now = self.clock()
        user_key = f"login:{username}"
        addr_key = f"login-addr:{client_addr}" if client_addr else None
        failure = AuthenticationError("invalid username or password")
        # The attempt is counted (reserved) before the password is checked, in one transaction: concurrent
        # attempts each get their own count, so no more than the allowed number are ever evaluated.
        with self.backend.begin() as store:
            user_attempts = store.rate_limits.hit(user_key, now, LOGIN_FAILURE_WINDOW)
            addr_attempts = store.rate_limits.hit(addr_key, now, LOGIN_FAILURE_WINDOW) if addr_key else 0
            limited = user_attempts > MAX_LOGIN_FAILURES or addr_attempts > MAX_LOGIN_FAILURES_PER_ADDRESS
            if limited:
                # Audited in this transaction, which commits: the refusal is raised after it.
                self.audit(store, events.USER_LOGIN_FAILURE, username, False, reason="rate limited")
            record = store.users.find(username)
        if limited:
            where = f'for "{username}"' if user_attempts > MAX_LOGIN_FAILURES else "from this address"
            raise RateLimitedError(
                f"too many failed login attempts {where}; try again later",
                retry_after=int(LOGIN_FAILURE_WINDOW.total_seconds()),
            )
        stored_hash = record.password_hash if record is not None else None
        if not self._password_matches(stored_hash or self._dummy_hash, password) or stored_hash is None:
            with self.backend.begin() as store:
                reason = "unknown user" if record is None else "no password set" if stored_hash is None else ""
                self.audit(store, events.USER_LOGIN_FAILURE, username, False, reason=reason or "bad password")
            raise failure
        assert record is not None
        user = _parse(record.body, User)
        with self.backend.begin() as store:
            # A success clears the user's failures and gives its reserved attempt back to the address.
            store.rate_limits.reset(user_key)
            if addr_key:
                store.rate_limits.release(addr_key, now, LOGIN_FAILURE_WINDOW)
            roles = self._load_roles(store, user.roles)
            self._check_locks(store, user.metadata.name, user.roles)
            result = self._issue_user_certs(
                store, user.metadata.name, "user", roles, user.traits, public_key, ttl, bot_name=None
            )
            self.audit(store, events.USER_LOGIN, username, True, method="local")
        return result

    def _check_locks(self, store: Store, username: str, roles: Sequence[str]) -> None:
        """No certificates for a locked user or role."""
        now = self.clock()
        locks = [parse_lock(record.body) for record in store.locks.list(now)]
        in_force = locks_in_force(locks, now, user=username, roles=roles)
        if in_force:
            raise AccessDeniedError(f"{in_force[0].target} is locked: {in_force[0].message or 'by an administrator'}")

    def _password_matches(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _issue_user_certs(
        self,
        store: Store,
        username: str,
        kind: str,
        roles: tuple[Role, ...],
        traits: Mapping[str, tuple[str, ...]],
        public_key: Any,
        ttl: timedelta | None,
        *,
        bot_name: str | None,
    ) -> LoginResult:
        now = self.clock()
        granted_ttl = self._cert_ttl(roles, ttl)
        checker = AccessChecker(roles, traits)
        identity = Identity(
            username=username,
            roles=tuple(role.metadata.name for role in roles),
            logins=checker.logins(),
            traits=dict(traits),
            not_before=now - CERT_BACKDATE,
            not_after=now + granted_ttl,
            bot_name=bot_name,
        )
        ssh_cert = issue_ssh_user_cert(self.user_ca, public_key, identity)
        tls_cert = issue_x509_client_cert(self.user_ca, public_key, identity)
        session_token = new_token()
        settings = self.auth_preference_in(store).device_trust
        modes = [settings.mode, *(role.options.device_trust_mode for role in roles if role.options.device_trust_mode)]
        store.sessions.create(
            hash_token(session_token),
            username,
            kind,
            {"bot": bot_name} if bot_name else {},
            identity.not_after,
        )
        self.audit(
            store,
            events.CERT_CREATE,
            username,
            True,
            identity={
                "user": username,
                "roles": list(identity.roles),
                "logins": list(identity.logins),
                "expires": identity.not_after.isoformat(),
                "bot_name": bot_name,
            },
            cert_type="user",
        )
        return LoginResult(
            session_token,
            identity,
            ssh_cert,
            tls_cert,
            device_trust_enabled=any(mode != "off" for mode in modes),
            auto_enroll=settings.auto_enroll,
            session_proof=settings.session_proof,
        )

    @staticmethod
    def _cert_ttl(roles: Sequence[Role], requested: timedelta | None) -> timedelta:
        ttl = requested or DEFAULT_CERT_TTL
        if ttl < MIN_CERT_TTL:
            raise ValidationError(f"--ttl must be at least {int(MIN_CERT_TTL.total_seconds() // 60)} minute")
        limits = [MAX_CERT_TTL] + [r.options.max_session_ttl for r in roles if r.options.max_session_ttl]
        return min([ttl, *limits])

    def logout(self, caller: Caller) -> None:
        with self.backend.begin() as store:
            store.sessions.delete(caller.session_hash)

    # -------------------------------------------------------------------------------------------- users
    def create_user(
        self, caller: Caller, name: str, roles: Sequence[str], traits: Mapping[str, Sequence[str]]
    ) -> tuple[User, str]:
        caller.check(RES_USER, "create")
        user = _parse(
            {
                "kind": "user",
                "version": "v2",
                "metadata": {"name": name},
                "spec": {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items()}},
            },
            User,
        )
        invite = new_token()
        with self.backend.begin() as store:
            self._require_roles_exist(store, user.roles)
            if store.users.find(name) is not None:
                raise AlreadyExistsError(f'user "{name}" already exists')
            store.users.create(name, resource_to_dict(user), None)
            self._store_invite(store, name, invite)
            self.audit(store, events.USER_CREATE, caller.name, True, name=name, roles=list(user.roles))
        return user, invite

    def _store_invite(self, store: Store, name: str, invite: str) -> None:
        store.tokens.delete_by_subject("signup", name)
        store.tokens.create(hash_token(invite), "signup", name, {}, self.clock() + INVITE_TTL, single_use=True)

    def reset_user(self, caller: Caller, name: str) -> str:
        """Clear the password and sessions and hand out a new invite."""
        caller.check(RES_USER, "update")
        invite = new_token()
        with self.backend.begin() as store:
            store.users.get(name)
            store.users.set_password_hash(name, None)
            store.sessions.delete_for_user(name)
            self._store_invite(store, name, invite)
            self.audit(store, events.USER_UPDATE, caller.name, True, name=name, change="reset")
        return invite

    def update_user(
        self,
        caller: Caller,
        name: str,
        *,
        set_roles: Sequence[str] | None = None,
        set_traits: Mapping[str, Sequence[str]] | None = None,
    ) -> User:
        caller.check(RES_USER, "update")
        with self.backend.begin() as store:
            current = _parse(store.users.get(name).body, User)
            doc = resource_to_dict(current)
            if set_roles is not None:
                doc["spec"]["roles"] = list(set_roles)
            if set_traits:
                traits = dict(doc["spec"].get("traits", {}))
                traits.update({k: list(v) for k, v in set_traits.items()})
                doc["spec"]["traits"] = traits
            user = _parse(doc, User)
            self._require_roles_exist(store, user.roles)
            store.users.update(name, resource_to_dict(user))
            self.audit(store, events.USER_UPDATE, caller.name, True, name=name, roles=list(user.roles))
        return user

    def _require_roles_exist(self, store: Store, names: Sequence[str]) -> None:
        if not names:
            raise ValidationError("at least one role is required (--roles)")
        for role in names:
            if store.resources.find(RES_ROLE, role) is None:
                raise NotFoundError(f'role "{role}" not found')

    def signup(self, invite: str, password: str) -> str:
        """Spend an invite to set the user's password. Returns the user name."""
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValidationError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise ValidationError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
        password_hash = self._hasher.hash(password)
        with self.backend.begin() as store:
            try:
                token = store.tokens.consume(hash_token(invite), "signup", self.clock())
            except NotFoundError:
                raise AuthenticationError("invalid or expired signup token") from None
            store.users.set_password_hash(token.subject, password_hash)
            store.sessions.delete_for_user(token.subject)
            self.audit(store, events.USER_PASSWORD_CHANGE, token.subject, True)
        return token.subject

    # -------------------------------------------------------------------------------------------- bots
    def create_bot(
        self,
        caller: Caller,
        name: str,
        roles: Sequence[str],
        traits: Mapping[str, Sequence[str]],
        token_ttl: timedelta | None,
    ) -> tuple[Bot, str, datetime]:
        caller.check(RES_BOT, "create")
        bot = _parse(
            {
                "kind": "bot",
                "version": "v1",
                "metadata": {"name": name},
                "spec": {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items()}},
            },
            Bot,
        )
        token = new_token()
        expires = self.clock() + _bounded_ttl(token_ttl or DEFAULT_BOT_TOKEN_TTL)
        with self.backend.begin() as store:
            self._require_roles_exist(store, bot.roles)
            store.resources.create(RES_BOT, name, resource_to_dict(bot))
            store.tokens.create(hash_token(token), "bot", name, {}, expires, single_use=True)
            self.audit(store, events.BOT_CREATE, caller.name, True, name=name, roles=list(bot.roles))
        return bot, token, expires

    def bot_join(self, token: str, public_key_text: str, ttl: timedelta | None) -> LoginResult:
        public_key = load_public_key(public_key_text)
        result: LoginResult | None = None
        with self.backend.begin() as store:
            try:
                record = store.tokens.consume(hash_token(token), "bot", self.clock())
            except NotFoundError:
                # Audited in this transaction, which commits: the refusal is raised after it.
                self.audit(store, events.BOT_JOIN_FAILURE, "", False, reason="invalid token")
            else:
                bot = _parse(store.resources.get(RES_BOT, record.subject).body, Bot)
                username = BOT_USER_PREFIX + bot.metadata.name
                roles = self._load_roles(store, bot.roles)
                self._check_locks(store, username, bot.roles)
                result = self._issue_user_certs(
                    store, username, "bot", roles, bot.traits, public_key, ttl, bot_name=bot.metadata.name
                )
                self.audit(store, events.BOT_JOIN, username, True, bot=bot.metadata.name)
        if result is None:
            raise AuthenticationError("invalid or expired bot join token")
        return result

    def delete_bot(self, caller: Caller, name: str) -> None:
        caller.check(RES_BOT, "delete")
        with self.backend.begin() as store:
            store.resources.delete(RES_BOT, name)
            store.tokens.delete_by_subject("bot", name)
            store.sessions.delete_for_user(BOT_USER_PREFIX + name)
            self.audit(store, events.BOT_DELETE, caller.name, True, name=name)

    # ------------------------------------------------------------------------------------------ tokens
    def create_join_token(self, caller: Caller, token_type: str, ttl: timedelta | None) -> tuple[str, datetime]:
        caller.check(RES_TOKEN, "create")
        if token_type not in JOIN_TOKEN_TYPES:
            raise ValidationError(f"--type: expected one of {', '.join(JOIN_TOKEN_TYPES)}, got {token_type!r}")
        token = new_token()
        expires = self.clock() + _bounded_ttl(ttl or DEFAULT_JOIN_TOKEN_TTL)
        with self.backend.begin() as store:
            store.tokens.create(hash_token(token), token_type, "", {}, expires, single_use=False)
            self.audit(
                store,
                events.TOKEN_CREATE,
                caller.name,
                True,
                token_type=token_type,
                expires=expires.isoformat(),
            )
        return token, expires

    def list_tokens(self, caller: Caller) -> list[dict[str, Any]]:
        caller.check(RES_TOKEN, "list")
        with self.backend.begin() as store:
            records = store.tokens.list(self.clock())
        return [
            {
                "id": token_id(record.token_hash),
                "type": record.kind,
                "subject": record.subject,
                "expires": record.expires.isoformat(),
            }
            for record in records
            if record.kind != "signup" or caller.checker.has_rule(RES_USER, "read")
        ]

    def delete_token(self, caller: Caller, identifier: str) -> None:
        caller.check(RES_TOKEN, "delete")
        with self.backend.begin() as store:
            matches = [r for r in store.tokens.list(self.clock()) if token_id(r.token_hash) == identifier]
            if not matches:
                raise NotFoundError(f'token "{identifier}" not found')
            store.tokens.delete(matches[0].token_hash)
            self.audit(store, events.TOKEN_DELETE, caller.name, True, token_type=matches[0].kind)

    # -------------------------------------------------------------------------------- generic resources
    def list_resources(self, caller: Caller, kind: str) -> list[dict[str, Any]]:
        kind = normalize_kind(kind)
        if kind == RES_CERT_AUTHORITY:
            return self.cert_authority_documents()
        caller.check(kind, "list")
        caller.check(kind, "read")
        if kind == RES_DEVICE:
            return [resource_to_dict(device) for device in self.devices.list_all(caller)]
        with self.backend.begin() as store:
            if kind == RES_USER:
                return [record.body for record in store.users.list()]
            if kind == CAP_KIND:
                return [store.resources.get(CAP_KIND, CAP_NAME).body]
            if kind == RES_LOCK:
                return [record.body for record in store.locks.list(self.clock())]
            self._require_generic(kind)
            return [record.body for record in store.resources.list(kind)]

    def get_resource(self, caller: Caller, kind: str, name: str) -> dict[str, Any]:
        kind = normalize_kind(kind)
        if kind == RES_CERT_AUTHORITY:
            found = [doc for doc in self.cert_authority_documents() if doc["metadata"]["name"] == name]
            if not found:
                raise NotFoundError(f'cert_authority "{name}" not found (the cluster has "user" and "host")')
            return found[0]
        caller.check(kind, "read")
        if kind == RES_DEVICE:
            return resource_to_dict(self.devices.get(caller, name))
        with self.backend.begin() as store:
            if kind == RES_USER:
                return store.users.get(name).body
            if kind == CAP_KIND:
                return store.resources.get(CAP_KIND, CAP_NAME).body
            if kind == RES_LOCK:
                return store.locks.get(name).body
            self._require_generic(kind)
            return store.resources.get(kind, name).body

    def put_resource(self, caller: Caller, doc: Mapping[str, Any], *, force: bool) -> tuple[Resource, str]:
        """Create (or with ``force`` overwrite) a resource from its document.

        Returns the resource and what happened: "created", "updated" or "unchanged". Creating a resource that
        exists with exactly this content succeeds unchanged, so applying the seed's preset role YAML is idempotent.
        """
        resource = parse_resource(doc)
        kind = resource.kind
        name = resource.metadata.name
        if isinstance(resource, Device):
            return resource, self.devices.put(caller, resource, force=force)
        if isinstance(resource, Lock):
            return resource, self.create_lock(caller, resource)
        body = resource_to_dict(resource)
        with self.backend.begin() as store:
            if kind not in (RES_USER, CAP_KIND):
                stored = store.resources.find(kind, name)
                if stored is not None and stored.body == body:
                    caller.check(kind, "read")
                    return resource, "unchanged"
            if kind == RES_USER:
                assert isinstance(resource, User)
                self._require_roles_exist(store, resource.roles)
                existed = store.users.find(name) is not None
                self._check_write(caller, kind, name, existed, force)
                if existed:
                    store.users.update(name, body)
                else:
                    store.users.create(name, body, None)
                self.audit(store, events.USER_UPDATE if existed else events.USER_CREATE, caller.name, True, name=name)
                return resource, "updated" if existed else "created"
            if kind == RES_BOT:
                assert isinstance(resource, Bot)
                self._require_roles_exist(store, resource.roles)
            existed = store.resources.find(kind, name) is not None
            if kind == CAP_KIND:
                # A singleton: `tctl create` of it is always an update (like Teleport's).
                caller.check(kind, "update")
                existed, force = True, True
            else:
                self._check_write(caller, kind, name, existed, force)
            store.resources.upsert(kind, name, body)
            event = {
                RES_ROLE: events.ROLE_UPDATE if existed else events.ROLE_CREATE,
                CAP_KIND: events.CAP_UPDATE,
                RES_BOT: events.BOT_CREATE,
            }[kind]
            details: dict[str, Any] = {"name": name}
            if isinstance(resource, ClusterAuthPreference):
                details["device_trust"] = {
                    "mode": resource.device_trust.mode,
                    "auto_enroll": resource.device_trust.auto_enroll,
                }
            self.audit(store, event, caller.name, True, **details)
        return resource, "updated" if existed else "created"

    @staticmethod
    def _check_write(caller: Caller, kind: str, name: str, existed: bool, force: bool) -> None:
        caller.check(kind, "update" if existed else "create")
        if existed and not force:
            raise AlreadyExistsError(f'{kind} "{name}" already exists; use --force to overwrite it')

    def delete_resource(self, caller: Caller, kind: str, name: str) -> None:
        kind = normalize_kind(kind)
        if kind == RES_BOT:
            self.delete_bot(caller, name)
            return
        if kind == RES_DEVICE:
            self.devices.delete(caller, name)
            return
        if kind == RES_LOCK:
            self.delete_lock(caller, name)
            return
        if kind == RES_CERT_AUTHORITY:
            raise ValidationError("cert_authority cannot be deleted: every certificate of the cluster depends on it")
        caller.check(kind, "delete")
        with self.backend.begin() as store:
            if kind == RES_USER:
                store.users.delete(name)
                store.sessions.delete_for_user(name)
                store.tokens.delete_by_subject("signup", name)
                self.audit(store, events.USER_DELETE, caller.name, True, name=name)
                return
            if kind == CAP_KIND:
                raise ValidationError("cluster_auth_preference cannot be deleted; edit it instead")
            self._require_generic(kind)
            store.resources.delete(kind, name)
            self.audit(store, events.ROLE_DELETE, caller.name, True, name=name)

    # -------------------------------------------------------------------------------------------- locks
    def create_lock(self, caller: Caller, lock: Lock) -> str:
        caller.check(RES_LOCK, "create")
        now = self.clock()
        lock = dataclasses.replace(lock, created=lock.created or now, created_by=lock.created_by or caller.name)
        with self.backend.begin() as store:
            store.locks.create(lock.name, lock.target.kind, lock.target.value, resource_to_dict(lock), lock.expires)
            self.audit(
                store,
                events.LOCK_CREATE,
                caller.name,
                True,
                name=lock.name,
                target={lock.target.kind: lock.target.value},
                message=lock.message,
            )
        return "created"

    def delete_lock(self, caller: Caller, name: str) -> None:
        caller.check(RES_LOCK, "delete")
        with self.backend.begin() as store:
            store.locks.delete(name)
            self.audit(store, events.LOCK_DELETE, caller.name, True, name=name)

    @staticmethod
    def _require_generic(kind: str) -> None:
        if kind not in (RES_ROLE, RES_BOT):
            raise ValidationError(f'resource kind "{kind}" is not served by this auth service yet')

    # ------------------------------------------------------------------------------------------- audit
    def search_events(
        self,
        caller: Caller,
        *,
        since: datetime | None,
        until: datetime | None,
        event_types: Sequence[str],
        user: str | None,
        limit: int,
        after_id: int | None,
        newest: bool = False,
    ) -> list[dict[str, Any]]:
        caller.check(RES_EVENT, "list")
        caller.check(RES_EVENT, "read")
        with self.backend.begin() as store:
            records = store.audit.search(
                since=since,
                until=until,
                event_types=event_types,
                user=user,
                limit=limit,
                after_id=after_id,
                newest=newest,
            )
        return [
            {
                "id": r.id,
                "uid": r.uid,
                "event": r.event,
                "code": r.code,
                "time": r.time.isoformat(),
                "user": r.user,
                "success": r.success,
                **r.body,
            }
            for r in records
        ]

    def audit(self, store: Store, event: tuple[str, str], user: str, success: bool, /, **body: Any) -> None:
        name, code = event
        body.setdefault("cluster_name", self.cluster_name)
        store.audit.append(name, code, self.clock(), user, success, body)

    # -------------------------------------------------------------------------------------------- info
    def auth_preference(self) -> ClusterAuthPreference:
        with self.backend.begin() as store:
            return self.auth_preference_in(store)

    @staticmethod
    def auth_preference_in(store: Store) -> ClusterAuthPreference:
        return _parse(store.resources.get(CAP_KIND, CAP_NAME).body, ClusterAuthPreference)

    def ping(self) -> dict[str, Any]:
        cap = self.auth_preference()
        return {
            "cluster_name": self.cluster_name,
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

    def cluster_cas(self) -> dict[str, str]:
        return {
            "user_ca_ssh": self.user_ca.ssh_public_key(),
            "user_ca_pem": self.user_ca.certificate_pem().decode(),
            "host_ca_ssh": self.host_ca.ssh_public_key(),
            "host_ca_pem": self.host_ca.certificate_pem().decode(),
        }

    def cert_authority_documents(self) -> list[dict[str, Any]]:
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
            for ca in (self.user_ca, self.host_ca)
        ]

    def whoami(self, caller: Caller) -> dict[str, Any]:
        return {
            "user": caller.name,
            "kind": caller.kind,
            "roles": list(caller.role_names),
            "logins": list(caller.checker.logins()),
            "bot_name": caller.bot_name,
        }


def _bounded_ttl(ttl: timedelta) -> timedelta:
    if ttl <= timedelta(0):
        raise ValidationError("--ttl must be positive")
    if ttl > MAX_TOKEN_TTL:
        raise ValidationError(f"--ttl must be at most {MAX_TOKEN_TTL.days} days")
    return ttl


def _parse(body: Mapping[str, Any], cls: type[_R]) -> _R:
    resource = parse_stored(body)
    if not isinstance(resource, cls):
        raise ValidationError(f"stored resource is a {type(resource).__name__}, expected {cls.__name__}")
    return resource


def public_key_pem(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
