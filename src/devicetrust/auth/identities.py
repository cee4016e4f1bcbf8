"""Identities: users (invites, password setting), bots and the join tokens agents use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher

from devicetrust import audit as events
from devicetrust.auth.context import (
    BOT_USER_PREFIX,
    RES_BOT,
    RES_ROLE,
    RES_TOKEN,
    RES_USER,
    AuthContext,
    Caller,
    parse_as,
)
from devicetrust.auth.secrets import hash_token, new_token, token_id
from devicetrust.errors import AlreadyExistsError, AuthenticationError, NotFoundError, ValidationError
from devicetrust.storage.repositories import Store
from devicetrust.types import Bot, User, resource_to_dict

#: A signup (invite) link is good for one hour, like Teleport's.
INVITE_TTL = timedelta(hours=1)
DEFAULT_BOT_TOKEN_TTL = timedelta(hours=1)
DEFAULT_JOIN_TOKEN_TTL = timedelta(minutes=30)
MAX_TOKEN_TTL = timedelta(days=7)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
JOIN_TOKEN_TYPES = ("node", "db", "kube", "mdm")


def require_roles_exist(store: Store, names: Sequence[str]) -> None:
    if not names:
        raise ValidationError("at least one role is required")
    for role in names:
        if store.resources.find(RES_ROLE, role) is None:
            raise NotFoundError(f'role "{role}" not found')


def check_token_ttl(ttl: timedelta, what: str = "a token TTL") -> timedelta:
    """``what`` names the value in the message: the CLIs pass the flag the user typed."""
    if ttl <= timedelta(0):
        raise ValidationError(f"{what} must be positive")
    if ttl > MAX_TOKEN_TTL:
        raise ValidationError(f"{what} must be at most {MAX_TOKEN_TTL.days} days")
    return ttl


def check_join_token_type(token_type: str, what: str = "join token type") -> str:
    if token_type not in JOIN_TOKEN_TYPES:
        raise ValidationError(f"{what}: expected one of {', '.join(JOIN_TOKEN_TYPES)}, got {token_type!r}")
    return token_type


def _identity_doc(kind: str, version: str, name: str, roles: Sequence[str], traits: Mapping[str, Sequence[str]]) -> Any:
    return {
        "kind": kind,
        "version": version,
        "metadata": {"name": name},
        "spec": {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items()}},
    }


class IdentityService:
    def __init__(self, context: AuthContext, password_hasher: PasswordHasher) -> None:
        self.context = context
        self._hasher = password_hasher

    # -------------------------------------------------------------------------------------------- users
    def create_user(
        self, caller: Caller, name: str, roles: Sequence[str], traits: Mapping[str, Sequence[str]]
    ) -> tuple[User, str]:
        caller.check(RES_USER, "create")
        user = parse_as(_identity_doc("user", "v2", name, roles, traits), User)
        invite = new_token()
        with self.context.backend.begin() as store:
            require_roles_exist(store, user.roles)
            if store.users.find(name) is not None:
                raise AlreadyExistsError(f'user "{name}" already exists')
            store.users.create(name, resource_to_dict(user), None)
            self._store_invite(store, name, invite)
            self.context.audit(store, events.USER_CREATE, caller.name, True, name=name, roles=list(user.roles))
        return user, invite

    def _store_invite(self, store: Store, name: str, invite: str) -> None:
        store.tokens.delete_by_subject("signup", name)
        store.tokens.create(hash_token(invite), "signup", name, {}, self.context.clock() + INVITE_TTL, single_use=True)

    def reset_user(self, caller: Caller, name: str) -> str:
        """Clear the password and sessions and hand out a new invite."""
        caller.check(RES_USER, "update")
        invite = new_token()
        with self.context.backend.begin() as store:
            store.users.get(name)
            store.users.set_password_hash(name, None)
            store.sessions.delete_for_user(name)
            self._store_invite(store, name, invite)
            self.context.audit(store, events.USER_UPDATE, caller.name, True, name=name, change="reset")
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
        with self.context.backend.begin() as store:
            current = parse_as(store.users.get(name).body, User)
            doc = resource_to_dict(current)
            spec = doc["spec"]
            assert isinstance(spec, dict)
            if set_roles is not None:
                spec["roles"] = list(set_roles)
            if set_traits:
                traits = spec.get("traits", {})
                assert isinstance(traits, dict)
                spec["traits"] = {**traits, **{k: list(v) for k, v in set_traits.items()}}
            user = parse_as(doc, User)
            require_roles_exist(store, user.roles)
            store.users.update(name, resource_to_dict(user))
            self.context.audit(store, events.USER_UPDATE, caller.name, True, name=name, roles=list(user.roles))
        return user

    def delete_user(self, caller: Caller, name: str) -> None:
        caller.check(RES_USER, "delete")
        with self.context.backend.begin() as store:
            store.users.delete(name)
            store.sessions.delete_for_user(name)
            store.tokens.delete_by_subject("signup", name)
            self.context.audit(store, events.USER_DELETE, caller.name, True, name=name)

    def signup(self, invite: str, password: str) -> str:
        """Spend an invite to set the user's password. Returns the user name."""
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValidationError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise ValidationError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
        password_hash = self._hasher.hash(password)
        with self.context.backend.begin() as store:
            try:
                token = store.tokens.consume(hash_token(invite), "signup", self.context.clock())
            except NotFoundError:
                raise AuthenticationError("invalid or expired signup token") from None
            store.users.set_password_hash(token.subject, password_hash)
            store.sessions.delete_for_user(token.subject)
            self.context.audit(store, events.USER_PASSWORD_CHANGE, token.subject, True)
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
        bot = parse_as(_identity_doc("bot", "v1", name, roles, traits), Bot)
        token = new_token()
        expires = self.context.clock() + check_token_ttl(token_ttl or DEFAULT_BOT_TOKEN_TTL)
        with self.context.backend.begin() as store:
            require_roles_exist(store, bot.roles)
            store.resources.create(RES_BOT, name, resource_to_dict(bot))
            store.tokens.create(hash_token(token), "bot", name, {}, expires, single_use=True)
            self.context.audit(store, events.BOT_CREATE, caller.name, True, name=name, roles=list(bot.roles))
        return bot, token, expires

    def delete_bot(self, caller: Caller, name: str) -> None:
        caller.check(RES_BOT, "delete")
        with self.context.backend.begin() as store:
            store.resources.delete(RES_BOT, name)
            store.tokens.delete_by_subject("bot", name)
            store.sessions.delete_for_user(BOT_USER_PREFIX + name)
            self.context.audit(store, events.BOT_DELETE, caller.name, True, name=name)

    # ------------------------------------------------------------------------------------------ tokens
    def create_join_token(self, caller: Caller, token_type: str, ttl: timedelta | None) -> tuple[str, datetime]:
        caller.check(RES_TOKEN, "create")
        check_join_token_type(token_type)
        token = new_token()
        expires = self.context.clock() + check_token_ttl(ttl or DEFAULT_JOIN_TOKEN_TTL)
        with self.context.backend.begin() as store:
            store.tokens.create(hash_token(token), token_type, "", {}, expires, single_use=False)
            self.context.audit(
                store,
                events.TOKEN_CREATE,
                caller.name,
                True,
                token_type=token_type,
                expires=expires.isoformat(),
            )
        return token, expires

    def list_tokens(self, caller: Caller) -> list[dict[str, str]]:
        caller.check(RES_TOKEN, "list")
        with self.context.backend.begin() as store:
            records = store.tokens.list(self.context.clock())
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
        with self.context.backend.begin() as store:
            matches = [r for r in store.tokens.list(self.context.clock()) if token_id(r.token_hash) == identifier]
            if not matches:
                raise NotFoundError(f'token "{identifier}" not found')
            store.tokens.delete(matches[0].token_hash)
            self.context.audit(store, events.TOKEN_DELETE, caller.name, True, token_type=matches[0].kind)
