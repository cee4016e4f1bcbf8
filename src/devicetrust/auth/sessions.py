"""Sessions: logging in (with its rate limits), bots joining, resolving bearer tokens to callers, logging out,
and the local admin's identity. Every session comes with certificates of the cluster's user CA."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography import x509

from devicetrust import audit as events
from devicetrust.access import AccessChecker
from devicetrust.auth.cache import CachedState
from devicetrust.auth.cluster import CERT_BACKDATE
from devicetrust.auth.context import BOT_USER_PREFIX, RES_BOT, AuthContext, Caller, parse_as
from devicetrust.auth.locks import require_unlocked
from devicetrust.auth.secrets import hash_token, new_token
from devicetrust.crypto.certs import issue_ssh_user_cert, issue_x509_client_cert
from devicetrust.crypto.identity import Identity
from devicetrust.crypto.keys import load_public_key
from devicetrust.errors import (
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    SessionExpiredError,
    ValidationError,
)
from devicetrust.storage.repositories import Store
from devicetrust.types import SESSION_PROOF_PER_SESSION, Bot, Role, User

#: Every failure to resolve a session token reads the same: nothing to learn from it.
SESSION_EXPIRED = "your session has expired or is not valid; run 'tsh login'"

log = logging.getLogger(__name__)

#: Certificates last 12 h unless asked otherwise (Teleport's default) and never longer than 30 h.
DEFAULT_CERT_TTL = timedelta(hours=12)
MAX_CERT_TTL = timedelta(hours=30)
MIN_CERT_TTL = timedelta(minutes=1)
#: Login failures allowed per user per window before further attempts are refused outright.
MAX_LOGIN_FAILURES = 5
LOGIN_FAILURE_WINDOW = timedelta(minutes=10)
#: Login failures allowed from one client address per window, whatever user names it tries.
MAX_LOGIN_FAILURES_PER_ADDRESS = 20
#: The local admin identity tctl uses on the auth host; rotated at every start.
ADMIN_IDENTITY_TTL = timedelta(days=365)
ADMIN_ROLES = ("editor", "auditor", "device-admin")


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


def load_roles(context: AuthContext, store: Store, names: Sequence[str]) -> tuple[Role, ...]:
    """The roles of these names (cached); a role deleted after assignment grants nothing."""
    return context.state(store).roles_named(list(names))


class SessionService:
    def __init__(self, context: AuthContext, password_hasher: PasswordHasher) -> None:
        self.context = context
        self._hasher = password_hasher
        # Verified against when the user is unknown, so both paths cost the same.
        self._dummy_hash = password_hasher.hash("devicetrust-dummy-password")

    def issue_admin_identity(self, host: str | None = None, *, replaces: str | None = None) -> str:
        """A fresh token for the local admin (tctl on this host). ``replaces``, the token this server wrote at its
        previous start, is revoked; the tokens of other auth servers on the same backend, even on hosts of the same
        name, stay valid."""
        subject = f"admin@{host or socket.gethostname()}"
        token = new_token()
        clock = self.context.clock
        with self.context.backend.begin() as store:
            if replaces:
                with contextlib.suppress(NotFoundError):
                    previous = store.sessions.get_valid(hash_token(replaces), clock())
                    if previous.kind == "admin":
                        store.sessions.delete(previous.token_hash)
            store.sessions.create(
                hash_token(token),
                subject,
                "admin",
                {"roles": list(ADMIN_ROLES)},
                clock() + ADMIN_IDENTITY_TTL,
            )
        return token

    def authenticate(self, token: str) -> Caller:
        """Resolve a bearer token to a caller. One message for every failure: nothing to learn from it."""
        with self.context.backend.read() as store:
            return self.authenticate_in(store, token)[0]

    def authenticate_in(self, store: Store, token: str) -> tuple[Caller, CachedState | None]:
        """:meth:`authenticate` within the transaction ``store``, which may go on to read what the request needs;
        with the access-control state the caller was resolved at (None for agents, which have no roles).

        One statement reads the session and the state generation; while neither the session's user, bot or
        roles changed (the generation did not move), the caller resolved before is reused."""
        expired = SessionExpiredError(SESSION_EXPIRED)
        if not token:
            raise expired
        token_hash = hash_token(token)
        try:
            session, generation = store.sessions.get_valid_at_generation(token_hash, self.context.clock())
        except NotFoundError:
            raise expired from None
        if session.kind in ("node", "db", "kube"):  # an agent: no roles, its own endpoints
            return Caller(session.user, session.kind, (), {}, token_hash), None
        if session.kind == "mdm":
            return Caller(session.user, "mdm", (), {}, token_hash), None
        state = self.context.cache.at(store, generation)
        known = state.callers.get(token_hash)
        if isinstance(known, Caller):
            return known, state
        caller = self._resolve(store, state, session.kind, session.user, session.body, token_hash)
        if caller is None:
            raise expired
        state.remember_caller(token_hash, caller)
        return caller, state

    @staticmethod
    def _resolve(
        store: Store, state: CachedState, kind: str, name: str, body: Mapping[str, Any], token_hash: str
    ) -> Caller | None:
        if kind == "admin":
            return Caller(name, "admin", state.roles_named(body.get("roles", [])), {}, token_hash)
        if kind == "bot":
            bot_name = str(body["bot"])
            bot = state.bots.get(bot_name)
            if bot is None:
                return None
            return Caller(name, "bot", state.roles_named(list(bot.roles)), bot.traits, token_hash, bot_name=bot_name)
        user = state.user(store, name)
        if user is None:
            return None
        return Caller(user.metadata.name, "user", state.roles_named(list(user.roles)), user.traits, token_hash)

    def login(
        self,
        username: str,
        password: str,
        public_key_text: str,
        ttl: timedelta | None,
        *,
        client_addr: str | None = None,
    ) -> LoginResult:
        context = self.context
        public_key = load_public_key(public_key_text)
        now = context.clock()
        user_key = f"login:{username}"
        addr_key = f"login-addr:{client_addr}" if client_addr else None
        failure = AuthenticationError("invalid username or password")
        # The attempt is counted (reserved) before the password is checked, in one transaction: concurrent
        # attempts each get their own count, so no more than the allowed number are ever evaluated.
        with context.backend.begin() as store:
            user_attempts = store.rate_limits.hit(user_key, now, LOGIN_FAILURE_WINDOW)
            addr_attempts = store.rate_limits.hit(addr_key, now, LOGIN_FAILURE_WINDOW) if addr_key else 0
            limited = user_attempts > MAX_LOGIN_FAILURES or addr_attempts > MAX_LOGIN_FAILURES_PER_ADDRESS
            if limited:
                # Audited in this transaction, which commits: the refusal is raised after it.
                context.audit(store, events.USER_LOGIN_FAILURE, username, False, reason="rate limited")
            record = store.users.find(username)
        if limited:
            where = f'for "{username}"' if user_attempts > MAX_LOGIN_FAILURES else "from this address"
            raise RateLimitedError(
                f"too many failed login attempts {where}; try again later",
                retry_after=int(LOGIN_FAILURE_WINDOW.total_seconds()),
            )
        stored_hash = record.password_hash if record is not None else None
        if not self._password_matches(stored_hash or self._dummy_hash, password) or stored_hash is None:
            with context.backend.begin() as store:
                reason = "unknown user" if record is None else "no password set" if stored_hash is None else ""
                context.audit(store, events.USER_LOGIN_FAILURE, username, False, reason=reason or "bad password")
            raise failure
        assert record is not None
        user = parse_as(record.body, User)
        with context.backend.begin() as store:
            # A success clears the user's failures and gives its reserved attempt back to the address.
            store.rate_limits.reset(user_key)
            if addr_key:
                store.rate_limits.release(addr_key, now, LOGIN_FAILURE_WINDOW)
            roles = load_roles(context, store, user.roles)
            require_unlocked(context, store, context.clock(), user.metadata.name, user.roles)
            result = self._issue_user_certs(
                store, user.metadata.name, "user", roles, user.traits, public_key, ttl, bot_name=None
            )
            context.audit(store, events.USER_LOGIN, username, True, method="local")
        return result

    def bot_join(self, token: str, public_key_text: str, ttl: timedelta | None) -> LoginResult:
        context = self.context
        public_key = load_public_key(public_key_text)
        result: LoginResult | None = None
        with context.backend.begin() as store:
            try:
                record = store.tokens.consume(hash_token(token), "bot", context.clock())
            except NotFoundError:
                # Audited in this transaction, which commits: the refusal is raised after it.
                context.audit(store, events.BOT_JOIN_FAILURE, "", False, reason="invalid token")
            else:
                bot = parse_as(store.resources.get(RES_BOT, record.subject).body, Bot)
                username = BOT_USER_PREFIX + bot.metadata.name
                roles = load_roles(context, store, bot.roles)
                require_unlocked(context, store, context.clock(), username, bot.roles)
                result = self._issue_user_certs(
                    store, username, "bot", roles, bot.traits, public_key, ttl, bot_name=bot.metadata.name
                )
                context.audit(store, events.BOT_JOIN, username, True, bot=bot.metadata.name)
        if result is None:
            raise AuthenticationError("invalid or expired bot join token")
        return result

    def logout(self, caller: Caller) -> None:
        with self.context.backend.begin() as store:
            store.sessions.delete(caller.session_hash)

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
        context = self.context
        now = context.clock()
        granted_ttl = _cert_ttl(roles, ttl)
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
        ssh_cert = issue_ssh_user_cert(context.user_ca, public_key, identity)
        tls_cert = issue_x509_client_cert(context.user_ca, public_key, identity)
        session_token = new_token()
        settings = context.auth_preference_in(store).device_trust
        modes = [settings.mode, *(role.options.device_trust_mode for role in roles if role.options.device_trust_mode)]
        store.sessions.create(
            hash_token(session_token),
            username,
            kind,
            {"bot": bot_name} if bot_name else {},
            identity.not_after,
        )
        context.audit(
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


def _cert_ttl(roles: Sequence[Role], requested: timedelta | None) -> timedelta:
    ttl = requested or DEFAULT_CERT_TTL
    if ttl < MIN_CERT_TTL:
        raise ValidationError(f"certificate TTL must be at least {int(MIN_CERT_TTL.total_seconds() // 60)} minute")
    limits = [MAX_CERT_TTL] + [r.options.max_session_ttl for r in roles if r.options.max_session_ttl]
    return min([ttl, *limits])
