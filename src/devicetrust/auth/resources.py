"""Resources by kind (``tctl get/create/rm``): one handler per kind says how it is listed, read, written and
deleted — its storage, validation and audit events. The kind is also its RBAC resource name; the router checks
list/read/delete permissions before the handler runs, writes check their own (create or update)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devicetrust import audit as events
from devicetrust.auth.cluster import ClusterService
from devicetrust.auth.context import (
    CAP_KIND,
    CAP_NAME,
    RES_BOT,
    RES_CERT_AUTHORITY,
    RES_LOCK,
    RES_ROLE,
    RES_USER,
    AuthContext,
    Caller,
)
from devicetrust.auth.devices import RES_DEVICE, DeviceService
from devicetrust.auth.identities import IdentityService, require_roles_exist
from devicetrust.auth.locks import LockService
from devicetrust.errors import AlreadyExistsError, NotFoundError, ValidationError
from devicetrust.protocol import ResourceDocument
from devicetrust.types import ClusterAuthPreference, Resource, User, normalize_kind, parse_resource, resource_to_dict


@dataclass(frozen=True)
class KindHandler:
    list: Callable[[Caller], list[ResourceDocument]]
    get: Callable[[Caller, str], ResourceDocument]
    #: (caller, parsed resource, force) -> "created", "updated" or "unchanged"
    put: Callable[[Caller, Any, bool], str]
    delete: Callable[[Caller, str], None]
    #: readable by anyone and never deleted: the router checks no permission
    public: bool = False


def _check_write(caller: Caller, kind: str, name: str, existed: bool, force: bool) -> None:
    caller.check(kind, "update" if existed else "create")
    if existed and not force:
        raise AlreadyExistsError(f'{kind} "{name}" already exists')


class ResourceService:
    def __init__(
        self,
        context: AuthContext,
        *,
        identities: IdentityService,
        locks: LockService,
        devices: DeviceService,
        cluster: ClusterService,
    ) -> None:
        self.context = context
        self._cluster = cluster
        self.handlers: Mapping[str, KindHandler] = {
            RES_ROLE: KindHandler(
                list=lambda caller: self._list_stored(RES_ROLE),
                get=lambda caller, name: self._get_stored(RES_ROLE, name),
                put=self._put_role,
                delete=self._delete_role,
            ),
            RES_BOT: KindHandler(
                list=lambda caller: self._list_stored(RES_BOT),
                get=lambda caller, name: self._get_stored(RES_BOT, name),
                put=self._put_bot,
                delete=identities.delete_bot,
            ),
            RES_USER: KindHandler(
                list=self._list_users,
                get=self._get_user,
                put=self._put_user,
                delete=identities.delete_user,
            ),
            CAP_KIND: KindHandler(
                list=lambda caller: [self._get_stored(CAP_KIND, CAP_NAME)],
                # A singleton: any name reads it.
                get=lambda caller, name: self._get_stored(CAP_KIND, CAP_NAME),
                put=self._put_cap,
                delete=self._refuse_cap_delete,
            ),
            RES_LOCK: KindHandler(
                list=lambda caller: locks.list_all(),
                get=lambda caller, name: locks.get(name),
                put=lambda caller, lock, force: locks.create(caller, lock),
                delete=locks.delete,
            ),
            RES_DEVICE: KindHandler(
                list=lambda caller: [resource_to_dict(device) for device in devices.list_all(caller)],
                get=lambda caller, name: resource_to_dict(devices.get(caller, name)),
                put=lambda caller, device, force: devices.put(caller, device, force=force),
                delete=lambda caller, name: self._delete_device(devices, caller, name),
            ),
            RES_CERT_AUTHORITY: KindHandler(
                list=lambda caller: cluster.cert_authority_documents(),
                get=self._get_cert_authority,
                put=self._refuse_cert_authority_put,
                delete=self._refuse_cert_authority_delete,
                public=True,
            ),
        }

    # -------------------------------------------------------------------------------------------- router
    def _handler(self, kind: str) -> KindHandler:
        handler = self.handlers.get(kind)
        if handler is not None:
            return handler

        def unserved(*_: Any) -> Any:
            raise ValidationError(f'resource kind "{kind}" is not served by this auth service yet')

        return KindHandler(list=unserved, get=unserved, put=unserved, delete=unserved)

    def list_resources(self, caller: Caller, kind: str) -> list[ResourceDocument]:
        kind = normalize_kind(kind)
        handler = self._handler(kind)
        if not handler.public:
            caller.check(kind, "list")
            caller.check(kind, "read")
        return handler.list(caller)

    def get_resource(self, caller: Caller, kind: str, name: str) -> ResourceDocument:
        kind = normalize_kind(kind)
        handler = self._handler(kind)
        if not handler.public:
            caller.check(kind, "read")
        return handler.get(caller, name)

    def put_resource(self, caller: Caller, doc: Mapping[str, Any], *, force: bool) -> tuple[Resource, str]:
        """Create (or with ``force`` overwrite) a resource from its document.

        Returns the resource and what happened: "created", "updated" or "unchanged". Creating a resource that
        exists with exactly this content succeeds unchanged, so applying the seed's preset role YAML is idempotent.
        """
        resource = parse_resource(doc)
        return resource, self._handler(resource.kind).put(caller, resource, force)

    def delete_resource(self, caller: Caller, kind: str, name: str) -> None:
        kind = normalize_kind(kind)
        handler = self._handler(kind)
        if not handler.public:
            caller.check(kind, "delete")
        handler.delete(caller, name)

    # ------------------------------------------------------------------------------ generic stored kinds
    def _list_stored(self, kind: str) -> list[ResourceDocument]:
        with self.context.backend.read() as store:
            return [record.body for record in store.resources.list(kind)]

    def _get_stored(self, kind: str, name: str) -> ResourceDocument:
        with self.context.backend.read() as store:
            return store.resources.get(kind, name).body

    def _put_stored(
        self,
        caller: Caller,
        resource: Resource,
        force: bool,
        *,
        event: Callable[[bool], tuple[str, str]],
        roles: tuple[str, ...] | None = None,
    ) -> str:
        """Roles and bots: unchanged content is a no-op; ``roles``, those the resource grants, must exist."""
        kind, name = resource.kind, resource.metadata.name
        body = resource_to_dict(resource)
        with self.context.backend.begin() as store:
            stored = store.resources.find(kind, name)
            if stored is not None and stored.body == body:
                caller.check(kind, "read")
                return "unchanged"
            if roles is not None:
                require_roles_exist(store, roles)
            existed = stored is not None
            _check_write(caller, kind, name, existed, force)
            store.resources.upsert(kind, name, body)
            self.context.audit(store, event(existed), caller.name, True, name=name)
        return "updated" if existed else "created"

    def _put_role(self, caller: Caller, role: Resource, force: bool) -> str:
        return self._put_stored(
            caller, role, force, event=lambda existed: events.ROLE_UPDATE if existed else events.ROLE_CREATE
        )

    def _put_bot(self, caller: Caller, bot: Any, force: bool) -> str:
        return self._put_stored(caller, bot, force, event=lambda existed: events.BOT_CREATE, roles=bot.roles)

    def _delete_role(self, caller: Caller, name: str) -> None:
        with self.context.backend.begin() as store:
            store.resources.delete(RES_ROLE, name)
            self.context.audit(store, events.ROLE_DELETE, caller.name, True, name=name)

    # -------------------------------------------------------------------------------------------- users
    def _list_users(self, caller: Caller) -> list[ResourceDocument]:
        with self.context.backend.begin() as store:
            return [record.body for record in store.users.list()]

    def _get_user(self, caller: Caller, name: str) -> ResourceDocument:
        with self.context.backend.begin() as store:
            return store.users.get(name).body

    def _put_user(self, caller: Caller, user: User, force: bool) -> str:
        name = user.metadata.name
        body = resource_to_dict(user)
        with self.context.backend.begin() as store:
            require_roles_exist(store, user.roles)
            existed = store.users.find(name) is not None
            _check_write(caller, RES_USER, name, existed, force)
            if existed:
                store.users.update(name, body)
            else:
                store.users.create(name, body, None)
            event = events.USER_UPDATE if existed else events.USER_CREATE
            self.context.audit(store, event, caller.name, True, name=name)
        return "updated" if existed else "created"

    # ------------------------------------------------------------------------------ auth preference
    def _put_cap(self, caller: Caller, cap: ClusterAuthPreference, force: bool) -> str:
        # A singleton: `tctl create` of it is always an update (like Teleport's).
        caller.check(CAP_KIND, "update")
        name = cap.metadata.name
        with self.context.backend.begin() as store:
            store.resources.upsert(CAP_KIND, name, resource_to_dict(cap))
            device_trust = {"mode": cap.device_trust.mode, "auto_enroll": cap.device_trust.auto_enroll}
            self.context.audit(store, events.CAP_UPDATE, caller.name, True, name=name, device_trust=device_trust)
        return "updated"

    @staticmethod
    def _refuse_cap_delete(caller: Caller, name: str) -> None:
        raise ValidationError("cluster_auth_preference cannot be deleted; edit it instead")

    @staticmethod
    def _delete_device(devices: DeviceService, caller: Caller, name: str) -> None:
        devices.delete(caller, name)

    # --------------------------------------------------------------------------------- cert authorities
    def _get_cert_authority(self, caller: Caller, name: str) -> ResourceDocument:
        found = [doc for doc in self._cluster.cert_authority_documents() if doc["metadata"]["name"] == name]
        if not found:
            raise NotFoundError(f'cert_authority "{name}" not found (the cluster has "user" and "host")')
        return found[0]

    @staticmethod
    def _refuse_cert_authority_put(caller: Caller, resource: Any, force: bool) -> str:
        raise ValidationError("cert_authority is created by the auth service and cannot be written")

    @staticmethod
    def _refuse_cert_authority_delete(caller: Caller, name: str) -> None:
        raise ValidationError("cert_authority cannot be deleted: every certificate of the cluster depends on it")
