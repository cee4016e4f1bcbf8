"""Devices on the auth service: inventory, enrollment tokens, enrollment and device authentication.

The ceremonies' checks live in :mod:`devicetrust.ceremony`; this module adds what needs the backend: RBAC,
spending tokens and pending ceremonies exactly once, locks, audit, and minting the device-augmented certificates.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import JsonValue

from devicetrust import audit as events
from devicetrust.auth.nodes import resolve_visible_node
from devicetrust.auth.parsing import parse_stored
from devicetrust.auth.secrets import hash_token, new_token
from devicetrust.ceremony.ceremonies import (
    AUTHENTICATE,
    ENROLL,
    PendingCeremony,
    VerifiedProof,
    begin_authentication,
    begin_enrollment,
    finish_authentication,
    finish_enrollment,
)
from devicetrust.ceremony.messages import (
    CeremonyError,
    Challenge,
    ChallengeResponse,
    CollectedData,
    KeyEnrollPayload,
    TPMEnrollPayload,
)
from devicetrust.ceremony.sealed import open_sealed, seal
from devicetrust.crypto.certs import (
    issue_ssh_user_cert,
    issue_x509_client_cert,
    load_ssh_certificate,
    verify_ssh_user_cert,
)
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.crypto.keys import require_p256_public_key
from devicetrust.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    TrustError,
    ValidationError,
)
from devicetrust.storage.records import DeviceFilter, DeviceRecord, JsonPage
from devicetrust.storage.repositories import DEVICE_ENROLL_TOKEN_KIND as TOKEN_KIND
from devicetrust.storage.repositories import MAX_PAGE_SIZE, Store
from devicetrust.types import (
    ENROLL_STATUSES,
    OS_TYPES,
    Device,
    DeviceTrustSettings,
    locks_in_force,
    os_display_name,
    resource_to_dict,
)

if TYPE_CHECKING:
    from devicetrust.auth.cache import CachedState
    from devicetrust.auth.context import AuthContext, Caller

    #: the caller a session token resolves to within a transaction, and the state it was resolved at
    CallerLookup = Callable[[Store, str], tuple[Caller, CachedState | None]]
    #: what a ceremony reads first in its transaction: the caller and the access-control state
    CallerRead = Callable[[Store], tuple[Caller, CachedState]]

RES_DEVICE = "device"
#: Enrollment tokens last an hour unless asked otherwise, at most a week.
DEFAULT_ENROLL_TOKEN_TTL = timedelta(hours=1)
MAX_ENROLL_TOKEN_TTL = timedelta(days=7)
#: A streamed listing reads the database this many devices at a time; the first chunk is smaller: it is what a
#: user sees first.
STREAM_FIRST_CHUNK = 100
STREAM_CHUNK = MAX_PAGE_SIZE
#: Every enrollment-token failure reads the same, so a caller learns nothing about which check failed.
INVALID_ENROLL_TOKEN = "invalid device enrollment token"
TRUST_DISABLED = "device trust disabled by cluster settings"
#: Verified login certificates an auth worker remembers; past it the oldest half is forgotten.
MAX_REMEMBERED_LOGIN_CERTS = 10_000
#: Devices whose last document an auth worker keeps for their next ceremony; past it the oldest half is forgotten.
MAX_REMEMBERED_DEVICES = 1_000
#: How long a spent ceremony id is kept past the ceremony's expiry: auth servers' clocks may differ this much.
SPENT_CEREMONY_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class NodeByName:
    """A session proof's SSH node as the user named it (host id, host name or ``<hostname>.<cluster>``)."""

    name: str


@dataclass(frozen=True)
class AugmentedCerts:
    ssh_cert: bytes
    #: None for a session certificate to an SSH node: only databases and Kubernetes clusters take X.509
    tls_cert: x509.Certificate | None
    device: Device
    #: the device's document as it was stored
    document: dict[str, JsonValue]


def device_from_record(record: DeviceRecord) -> Device:
    resource = parse_stored(record.body)
    if not isinstance(resource, Device):
        raise ValidationError(f'stored device "{record.id}" is not a device document')
    return resource


def device_audit(device: Device, credential_id: str = "") -> dict[str, str]:
    return {
        "device_id": device.id,
        "asset_tag": device.asset_tag,
        "os": os_display_name(device.os_type),
        "credential_id": credential_id or (device.credential.id if device.credential else ""),
    }


def _bounded(ttl: timedelta | None) -> timedelta:
    ttl = ttl or DEFAULT_ENROLL_TOKEN_TTL
    if ttl <= timedelta(0) or ttl > MAX_ENROLL_TOKEN_TTL:
        raise ValidationError(f"an enrollment token TTL must be positive and at most {MAX_ENROLL_TOKEN_TTL.days} days")
    return ttl


def device_filter(
    *,
    search: str | None = None,
    asset_tag: str | None = None,
    os: str | None = None,
    enroll_status: str | None = None,
    source: str | None = None,
    owner: str | None = None,
) -> DeviceFilter | None:
    """A listing's filters, checked: the OS as stored or displayed (``macOS``), the enroll status with ``_``,
    ``-`` or a space (``not enrolled``). An empty search matches everything; an empty source matches devices of
    no MDM source and an empty owner devices nobody owns. None when nothing is filtered."""
    if os is not None:
        if os.strip().lower() not in OS_TYPES:
            raise ValidationError(f'os: invalid OS type "{os}" (valid: {", ".join(OS_TYPES)})')
        os = os.strip().lower()
    if enroll_status is not None:
        status = re.sub(r"[\s-]", "_", enroll_status.strip().lower())
        if status not in ENROLL_STATUSES:
            raise ValidationError(
                f'enroll_status: invalid enroll status "{enroll_status}" (valid: {", ".join(ENROLL_STATUSES)})'
            )
        enroll_status = status
    where = DeviceFilter(
        search=search or None,
        asset_tag=asset_tag,
        os_type=os,
        enroll_status=enroll_status,
        source_name=source,
        owner=owner,
    )
    return None if where == DeviceFilter() else where


class DeviceService:
    def __init__(self, context: AuthContext, caller_in: CallerLookup) -> None:
        self.context = context
        #: resolves a session token within a transaction, so a ceremony reads its caller and its device together
        self._caller_in = caller_in
        #: login certificates verified before, by their exact bytes: a user proves the device with the same one
        #: before every session of the day, and verifying costs more than the rest of ``begin``
        self._login_certs: dict[bytes, tuple[Identity, ec.EllipticCurvePublicKey]] = {}
        #: the device document each ceremony last read or wrote, by device id, with the stored body it was parsed
        #: from: the next ceremony of the device finds the same body and skips parsing it
        self._ceremony_devices: dict[str, tuple[Mapping[str, object], Device]] = {}

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def _backend(self) -> Any:
        return self.context.backend

    def _now(self) -> datetime:
        return self.context.clock()

    def _audit(self, store: Store, event: tuple[str, str], user: str, success: bool, **body: Any) -> None:
        self.context.audit(store, event, user, success, **body)

    def _save(self, store: Store, device: Device, *, expected_revision: int | None = None) -> Device:
        return self._write(store, device, expected_revision=expected_revision)[0]

    def _write(
        self, store: Store, device: Device, *, expected_revision: int | None = None
    ) -> tuple[Device, DeviceRecord]:
        return self._put(store, replace(device, update_time=self._now()), expected_revision=expected_revision)

    def _put(
        self, store: Store, device: Device, *, expected_revision: int | None = None
    ) -> tuple[Device, DeviceRecord]:
        """Store ``device`` as it is (its update_time set by the caller)."""
        written = store.devices.update(
            device.id,
            resource_to_dict(device),
            enroll_status=device.enroll_status,
            owner=device.owner,
            source_name=device.source.name if device.source else None,
            source_origin=device.source.origin if device.source else None,
            external_id=device.profile.external_id if device.profile and device.profile.external_id else None,
            expected_revision=expected_revision,
        )
        return device, written

    def _ceremony_device(self, record: DeviceRecord) -> Device:
        """:func:`device_from_record`, without parsing again a body this service parsed or wrote last (compared
        whole: equal bodies are the same document)."""
        known = self._ceremony_devices.get(record.id)
        if known is not None and known[0] == record.body:
            return known[1]
        device = device_from_record(record)
        self._remember_device(record, device)
        return device

    def _remember_device(self, record: DeviceRecord, device: Device) -> None:
        if len(self._ceremony_devices) >= MAX_REMEMBERED_DEVICES:
            for stale in list(self._ceremony_devices)[: MAX_REMEMBERED_DEVICES // 2]:
                self._ceremony_devices.pop(stale, None)
        self._ceremony_devices[record.id] = (record.body, device)

    def _settings(self) -> DeviceTrustSettings:
        return self.context.auth_preference().device_trust

    # -------------------------------------------------------------------------------------- inventory
    def add(
        self,
        caller: Caller,
        os_type: str,
        asset_tag: str,
        *,
        enroll_token_ttl: timedelta | None = None,
        create_token: bool = False,
    ) -> tuple[Device, str | None]:
        caller.check(RES_DEVICE, "create")
        if create_token:
            caller.check(RES_DEVICE, "create_enroll_token")
        now = self._now()
        device = Device(id=str(uuid.uuid4()), os_type=os_type, asset_tag=asset_tag, create_time=now, update_time=now)
        token = None
        with self._backend.begin() as store:
            store.devices.create(device.id, device.os_type, device.asset_tag, resource_to_dict(device))
            self._audit(store, events.DEVICE_CREATE, caller.name, True, device=device_audit(device))
            if create_token:
                token = self._new_enroll_token(store, caller, device, enroll_token_ttl)
        return device, token

    def put(self, caller: Caller, device: Device, *, force: bool) -> str:
        """``tctl create -f device.yaml``: register or (with force) update a device's registration. Enrollment
        state can only change through the ceremonies, so documents carrying a credential are refused."""
        if device.credential is not None or device.is_enrolled:
            raise ValidationError("spec.credential: set by enrollment only; remove it (and enroll_status)")
        with self._backend.begin() as store:
            existing = store.devices.find(device.id) or store.devices.find_by_asset_tag(
                device.os_type, device.asset_tag
            )
            if existing is None:
                caller.check(RES_DEVICE, "create")
                now = self._now()
                device = replace(device, create_time=now, update_time=now, owner="", collected_data=())
                store.devices.create(
                    device.id,
                    device.os_type,
                    device.asset_tag,
                    resource_to_dict(device),
                    source_name=device.source.name if device.source else None,
                    source_origin=device.source.origin if device.source else None,
                )
                self._audit(store, events.DEVICE_CREATE, caller.name, True, device=device_audit(device))
                return "created"
            caller.check(RES_DEVICE, "update")
            if not force:
                raise AlreadyExistsError(
                    f'device "{device.asset_tag}"/{os_display_name(device.os_type)} already exists'
                )
            current = device_from_record(existing)
            if (current.os_type, current.asset_tag) != (device.os_type, device.asset_tag):
                raise ValidationError(
                    "spec.asset_tag and spec.os_type identify a device and cannot change; remove and re-add it"
                )
            updated = replace(current, source=device.source, profile=device.profile)
            self._save(store, updated)
            self._audit(store, events.DEVICE_UPDATE, caller.name, True, device=device_audit(updated))
            return "updated"

    def list_page(
        self, caller: Caller, *, page_size: int, page_token: str | None, where: DeviceFilter | None = None
    ) -> tuple[list[Device], str | None]:
        self._check_list(caller, where)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValidationError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        with self._backend.read() as store:
            records, next_token = store.devices.list_page(page_size=page_size, page_token=page_token, where=where)
        return [device_from_record(r) for r in records], next_token

    def list_page_json(
        self,
        caller: Caller,
        *,
        page_size: int,
        page_token: str | None,
        where: DeviceFilter | None = None,
        summary: bool = False,
    ) -> JsonPage:
        """:meth:`list_page` as JSON texts made by the database (documents, or with ``summary`` the listing's
        columns), for big pages: nothing is parsed or validated again on the way out."""
        self._check_list(caller, where)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValidationError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        with self._backend.read() as store:
            page: JsonPage = store.devices.list_page_json(
                page_size=page_size, page_token=page_token, where=where, summary=summary
            )
        return page

    def stream_json(
        self,
        caller: Caller,
        *,
        page_token: str | None,
        where: DeviceFilter | None = None,
        summary: bool = False,
        limit: int | None = None,
    ) -> Iterator[JsonPage]:
        """The listing from ``page_token`` on, at most ``limit`` devices, as :meth:`list_page_json` pages read a
        chunk at a time, each in a transaction of its own: a long listing holds no transaction open. The last
        page's token continues after the listing (None when it reached the end).

        The first chunk is small (it is what a user sees first) and read before this returns, so a refused
        listing or a bad token fails here, not halfway through a stream.
        """
        self._check_list(caller, where)
        if limit is not None and limit < 1:
            raise ValidationError("a listing's limit must be at least 1")

        seen = 0

        def read(token: str | None, wanted: int) -> JsonPage:
            nonlocal seen
            size = wanted if limit is None else min(wanted, limit - seen)
            with self._backend.read() as store:
                page: JsonPage = store.devices.list_page_json(
                    page_size=size, page_token=token, where=where, summary=summary
                )
            seen += len(page.items)
            return page

        first = read(page_token, STREAM_FIRST_CHUNK)

        def pages() -> Iterator[JsonPage]:
            page = first
            while True:
                yield page
                if page.next_page_token is None or (limit is not None and seen >= limit):
                    return
                page = read(page.next_page_token, STREAM_CHUNK)

        return pages()

    @staticmethod
    def _check_list(caller: Caller, where: DeviceFilter | None) -> None:
        # Looking devices up by their asset tag is reading them (tsh does it to enroll its own device);
        # anything wider is listing the inventory.
        caller.check(RES_DEVICE, "read" if where is not None and where.asset_tag is not None else "list")

    def list_all(self, caller: Caller) -> list[Device]:
        devices: list[Device] = []
        token: str | None = None
        while True:
            page, token = self.list_page(caller, page_size=MAX_PAGE_SIZE, page_token=token)
            devices.extend(page)
            if token is None:
                return devices

    def get(self, caller: Caller, device_id: str) -> Device:
        caller.check(RES_DEVICE, "read")
        with self._backend.read() as store:
            return device_from_record(store.devices.get(device_id))

    def delete(self, caller: Caller, device_id: str) -> Device:
        caller.check(RES_DEVICE, "delete")
        with self._backend.begin() as store:
            device = device_from_record(store.devices.delete(device_id))
            store.tokens.delete_by_subject(TOKEN_KIND, device.id)
            self._audit(store, events.DEVICE_DELETE, caller.name, True, device=device_audit(device))
        return device

    def unenroll(self, caller: Caller, device_id: str) -> Device:
        caller.check(RES_DEVICE, "update")
        with self._backend.begin() as store:
            device = device_from_record(store.devices.get(device_id))
            previous = device.credential.id if device.credential else ""
            device = self._save(store, device.unenrolled())
            self._audit(
                store,
                events.DEVICE_UPDATE,
                caller.name,
                True,
                device=device_audit(device, previous),
                change="unenroll",
            )
        return device

    # ---------------------------------------------------------------------------------- enroll tokens
    def create_enroll_token(self, caller: Caller, device_id: str, ttl: timedelta | None) -> tuple[Device, str]:
        caller.check(RES_DEVICE, "create_enroll_token")
        with self._backend.begin() as store:
            device = device_from_record(store.devices.get(device_id))
            token = self._new_enroll_token(store, caller, device, ttl)
        return device, token

    def _new_enroll_token(self, store: Store, caller: Caller, device: Device, ttl: timedelta | None) -> str:
        token = new_token()
        expires = self._now() + _bounded(ttl)
        # One token per device: a new one replaces the old.
        store.tokens.delete_by_subject(TOKEN_KIND, device.id)
        store.tokens.create(hash_token(token), TOKEN_KIND, device.id, {}, expires, single_use=True)
        self._audit(
            store,
            events.DEVICE_TOKEN_CREATE,
            caller.name,
            True,
            device=device_audit(device),
            expires=expires.isoformat(),
        )
        return token

    # ------------------------------------------------------------------------------------- enrollment
    def enroll_begin(
        self,
        *,
        token: str | None,
        caller: Caller | None,
        credential_id: str,
        collected: CollectedData,
        tpm: TPMEnrollPayload | None,
        key: KeyEnrollPayload | None,
    ) -> Challenge:
        """Start an enrollment with an enrollment token, or token-less as auto-enrollment of a registered device
        by a logged-in user when the cluster allows it. The token is spent here, even if the ceremony fails."""
        now = self._now()
        settings = self._settings()
        ceremony_id = str(uuid.uuid4())
        failure: CeremonyError | None = None
        with self._backend.begin() as store:
            if token:
                try:
                    spent = store.tokens.consume(hash_token(token), TOKEN_KIND, now)
                except NotFoundError:
                    self._audit(store, events.DEVICE_TOKEN_SPENT, "", False, reason=INVALID_ENROLL_TOKEN)
                    failure = CeremonyError(INVALID_ENROLL_TOKEN)
                else:
                    record = store.devices.find(spent.subject)
                    if record is None:
                        failure = CeremonyError(INVALID_ENROLL_TOKEN)
                    else:
                        device = device_from_record(record)
                        self._audit(
                            store,
                            events.DEVICE_TOKEN_SPENT,
                            caller.name if caller else "",
                            True,
                            device=device_audit(device),
                        )
                user = caller.name if caller else ""
            else:
                if caller is None:
                    raise CeremonyError(INVALID_ENROLL_TOKEN)
                if not settings.auto_enroll:
                    raise CeremonyError("auto-enrollment is disabled; ask an administrator for an enrollment token")
                record = store.devices.find_by_asset_tag(collected.os_type, collected.serial_number)
                if record is None:
                    raise CeremonyError("this device is not registered; ask an administrator to add it")
                device = device_from_record(record)
                if device.is_enrolled:
                    raise CeremonyError("this device is already enrolled")
                self._check_profile(device, collected)
                user = caller.name
        if failure is not None:
            raise failure
        try:
            pending, challenge = begin_enrollment(
                ceremony_id=ceremony_id,
                device=device,
                user=user,
                credential_id=credential_id,
                collected=collected,
                tpm=tpm,
                key=key,
                settings=settings,
                now=now,
                random_bytes=secrets.token_bytes,
            )
        except CeremonyError as err:
            self._audit_failure(events.DEVICE_ENROLL, user, device, str(err))
            raise
        with self._backend.begin() as store:
            store.pending.create(pending.id, ENROLL, device.id, pending.to_body(), pending.expires)
        return challenge

    @staticmethod
    def _check_profile(device: Device, collected: CollectedData) -> None:
        """Auto-enrollment also requires agreement with what the MDM reported, where it reported anything."""
        profile = device.profile
        if profile is None:
            return
        if (
            profile.model_identifier
            and collected.model_identifier
            and (profile.model_identifier != collected.model_identifier)
        ):
            raise CeremonyError("device data does not match the device's MDM profile")

    def enroll_finish(self, response: ChallengeResponse) -> Device:
        now = self._now()
        pending = self._consume(response.ceremony_id, ENROLL, now)
        with self._backend.begin() as store:
            record = store.devices.find(pending.device_id)
        if record is None:
            raise CeremonyError("unknown or expired device ceremony")
        device = device_from_record(record)
        try:
            proof = finish_enrollment(pending, response, now=now)
        except CeremonyError as err:
            self._audit_failure(events.DEVICE_ENROLL, pending.user, device, str(err))
            raise
        with self._backend.begin() as store:
            current = device_from_record(store.devices.get(pending.device_id))
            if current.credential is not None and (
                current.credential.tpm_ek_public_sha256 != proof.credential.tpm_ek_public_sha256
                or current.credential.public_key_der != proof.credential.public_key_der
            ):
                raise CeremonyError(
                    "this device is enrolled with a different TPM; an administrator must unenroll it first"
                )
            enrolled = replace(
                current,
                enroll_status="enrolled",
                credential=proof.credential,
                owner=pending.user or current.owner,
                collected_data=(self._record(pending, proof, now),),
            )
            enrolled = self._save(store, enrolled)
            self._audit(
                store,
                events.DEVICE_ENROLL,
                pending.user,
                True,
                device=device_audit(enrolled),
                attestation_type=proof.credential.attestation_type,
                event_log=proof.event_log,
            )
        return enrolled

    def _consume(self, ceremony_id: str, kind: str, now: datetime) -> PendingCeremony:
        with self._backend.begin() as store:
            try:
                record = store.pending.consume(ceremony_id, kind, now)
            except NotFoundError:
                raise CeremonyError("unknown or expired device ceremony") from None
        return PendingCeremony.from_body(record.id, kind, record.expires, record.body)

    @staticmethod
    def _record(pending: PendingCeremony, proof: VerifiedProof, now: datetime) -> dict[str, str]:
        record = {k: v for k, v in pending.collected.items() if v}
        record["record_time"] = now.isoformat()
        record["event_log"] = proof.event_log
        return record

    def _audit_failure(self, event: tuple[str, str], user: str, device: Device | None, reason: str) -> None:
        with self._backend.begin() as store:
            details = {"device": device_audit(device)} if device is not None else {}
            self._audit(store, event, user, False, reason=reason, **details)

    # ---------------------------------------------------------------------------------- authentication
    def authenticate_begin(
        self,
        caller: Caller,
        *,
        credential_id: str,
        collected: CollectedData,
        ssh_cert: bytes,
        target: tuple[str, str] | None = None,
    ) -> Challenge:
        """Start device authentication for the caller's login certificate ``ssh_cert``. Without ``target`` it
        yields device-augmented login certificates; with ``target`` (kind, id) a session certificate whose proof
        admits one session to that target for the cluster's ``session_proof_ttl``.

        Nothing is written: the pending state goes to the device sealed, as the ceremony id
        (:mod:`devicetrust.ceremony.sealed`)."""
        return self._begin(
            self._known(caller), credential_id=credential_id, collected=collected, ssh_cert=ssh_cert, target=target
        )[1]

    def authenticate_begin_as(
        self,
        token: str,
        *,
        credential_id: str,
        collected: CollectedData,
        ssh_cert: bytes,
        target: tuple[str, str] | NodeByName | None = None,
    ) -> tuple[Caller, Challenge, dict[str, Any] | None]:
        """:meth:`authenticate_begin` for the caller of session ``token``, resolved with the ceremony's one read of
        the device. ``target`` may name an SSH node as the user did (:class:`NodeByName`): it is resolved among
        the nodes the caller may reach, in that read, and its stored document is returned too."""
        return self._begin(
            self._of_token(token), credential_id=credential_id, collected=collected, ssh_cert=ssh_cert, target=target
        )

    def _known(self, caller: Caller) -> CallerRead:
        return lambda store: (caller, self.context.state(store))

    def _of_token(self, token: str) -> CallerRead:
        def read(store: Store) -> tuple[Caller, CachedState]:
            caller, state = self._caller_in(store, token)
            return caller, state if state is not None else self.context.state(store)

        return read

    def _begin(
        self,
        caller_read: CallerRead,
        *,
        credential_id: str,
        collected: CollectedData,
        ssh_cert: bytes,
        target: tuple[str, str] | NodeByName | None,
    ) -> tuple[Caller, Challenge, dict[str, Any] | None]:
        now = self._now()
        device: Device | None = None
        refusal: CeremonyError | AccessDeniedError | None = None
        reason = ""
        node: dict[str, Any] | None = None
        with self._backend.read(latest=True) as store:
            caller, state = caller_read(store)
            record = None
            if caller.kind in ("user", "bot"):
                record = store.devices.find_by_asset_tag(collected.os_type, collected.serial_number)
            if isinstance(target, NodeByName):
                node = resolve_visible_node(store, caller, target.name, self.context.cluster_name)
                target = ("ssh", str(node["host_id"]))
        if caller.kind not in ("user", "bot"):
            raise AccessDeniedError("device authentication is for users and bots")
        if target is None:
            self._verified_unaugmented(caller, ssh_cert)
        else:
            self._verified_login_cert(caller, ssh_cert)
        settings = state.auth_preference.device_trust
        role_modes = [r.options.device_trust_mode for r in caller.roles if r.options.device_trust_mode]
        if all(mode == "off" for mode in [settings.mode, *role_modes]):
            raise CeremonyError(TRUST_DISABLED)
        if record is None:
            refusal, reason = CeremonyError("this device is not registered"), "device not registered"
        else:
            device = self._ceremony_device(record)
            in_force = locks_in_force(state.locks, now, user=caller.name, roles=caller.role_names, device_id=device.id)
            if in_force:
                message = in_force[0].message or "locked by an administrator"
                refusal, reason = AccessDeniedError(f"device authentication refused: {message}"), "locked"
            else:
                try:
                    pending, challenge = begin_authentication(
                        ceremony_id=str(uuid.uuid4()),
                        device=device,
                        user=caller.name,
                        session_hash=caller.session_hash,
                        credential_id=credential_id,
                        collected=collected,
                        now=now,
                        random_bytes=secrets.token_bytes,
                    )
                except CeremonyError as err:
                    refusal, reason = err, str(err)
        if refusal is not None:
            self._audit_failure(events.DEVICE_AUTHENTICATE, caller.name, device, reason)
            raise refusal
        # what finish needs besides the pending ceremony: the login certificate, and a session proof's target
        sealed: dict[str, object] = {
            **pending.to_body(),
            "id": pending.id,
            "expires": pending.expires.isoformat(),
            "ssh_cert": ssh_cert.decode(),
        }
        if target is not None:
            sealed["target"] = {"kind": target[0], "id": target[1]}
        return caller, replace(challenge, ceremony_id=seal(self.context.ceremony_key, sealed)), node

    def _verified_login_cert(self, caller: Caller, ssh_cert: bytes) -> Identity:
        """The caller's own login certificate (device-augmented or not; never a session certificate)."""
        return self._login_identity(caller, self._login_cert(ssh_cert)[0])

    def _login_cert(self, ssh_cert: bytes) -> tuple[Identity, ec.EllipticCurvePublicKey]:
        """The identity and key of a certificate signed by the user CA and valid now (TrustError otherwise)."""
        now = self._now()
        known = self._login_certs.get(ssh_cert)
        if known is not None and known[0].not_before <= now < known[0].not_after:
            return known
        identity = verify_ssh_user_cert(ssh_cert, [self.context.user_ca.ssh_public_key()], now)
        key = require_p256_public_key(load_ssh_certificate(ssh_cert).public_key(), "certificate key")
        if len(self._login_certs) >= MAX_REMEMBERED_LOGIN_CERTS:
            for stale in list(self._login_certs)[: MAX_REMEMBERED_LOGIN_CERTS // 2]:
                self._login_certs.pop(stale, None)
        self._login_certs[ssh_cert] = (identity, key)
        return identity, key

    @staticmethod
    def _login_identity(caller: Caller, identity: Identity) -> Identity:
        if identity.username != caller.name:
            raise TrustError("the certificate does not belong to the logged-in user")
        if identity.session_proof is not None:
            raise CeremonyError("a session certificate cannot be used to prove the device again; use the login one")
        return identity

    def _verified_unaugmented(self, caller: Caller, ssh_cert: bytes) -> Identity:
        identity = self._verified_login_cert(caller, ssh_cert)
        if identity.device is not None:
            raise CeremonyError("the certificate already carries device extensions; run 'tsh login' for new ones")
        return identity

    def _record_authentication(
        self, store: Store, device: Device, revision: int, record: dict[str, str]
    ) -> tuple[Device, DeviceRecord]:
        """Append ``record`` to the device's collected data (the enrollment record stays first). Written only if
        the device is as it was read (one statement); if it changed meanwhile (another session's ceremony, say),
        re-read under a row lock, and refused if its credential is not the one that was proven."""

        def appended(current: Device) -> Device:
            return current.with_authentication(record, self._now())

        try:
            return self._put(store, appended(device), expected_revision=revision)
        except ConflictError:
            current = device_from_record(store.devices.get(device.id, for_update=True))
        if current.credential != device.credential:
            raise CeremonyError("device is not enrolled")
        return self._put(store, appended(current))

    def _opened(self, ceremony_id: str) -> tuple[PendingCeremony, bytes, tuple[str, str] | None]:
        """The pending state sealed into ``ceremony_id`` at begin (whose it is and whether it is live are checked
        by :meth:`_owned`)."""
        state = open_sealed(self.context.ceremony_key, ceremony_id)
        try:
            expires = datetime.fromisoformat(str(state["expires"]))
            pending = PendingCeremony.from_body(str(state["id"]), AUTHENTICATE, expires, state)
            login_cert = str(state["ssh_cert"]).encode()
        except (KeyError, TypeError, ValueError):
            raise CeremonyError("unknown or expired device ceremony") from None
        return pending, login_cert, _pending_target(state)

    def _owned(self, caller: Caller, pending: PendingCeremony, now: datetime) -> None:
        """Refuse a ceremony that is not the caller's or no longer live. Ownership is checked before anything is
        spent: another user's finish must not burn the owner's ceremony."""
        unknown = CeremonyError("unknown or expired device ceremony")
        if not hmac.compare_digest(pending.user.encode(), caller.name.encode()):
            self._audit_failure(events.DEVICE_AUTHENTICATE, caller.name, None, "ceremony belongs to another user")
            raise unknown
        if now >= pending.expires:
            raise unknown

    def authenticate_finish(self, caller: Caller, response: ChallengeResponse) -> AugmentedCerts:
        """Verify the device's answer against the credential it holds now, then, in ONE write transaction, spend
        the ceremony (its id's primary key: of concurrent finishes exactly one commits), record the
        authentication on the device and audit it."""
        return self._finish(self._known(caller), response)[1]

    def authenticate_finish_as(self, token: str, response: ChallengeResponse) -> tuple[Caller, AugmentedCerts]:
        """:meth:`authenticate_finish` for the caller of session ``token``, resolved with the read of the device."""
        return self._finish(self._of_token(token), response)

    def _finish(self, caller_read: CallerRead, response: ChallengeResponse) -> tuple[Caller, AugmentedCerts]:
        now = self._now()
        pending, login_cert, target = self._opened(response.ceremony_id)
        with self._backend.read(latest=True) as store:
            caller, state = caller_read(store)
            record = store.devices.find(pending.device_id)
        self._owned(caller, pending, now)
        if record is None:
            raise CeremonyError("this device is not registered")
        device = self._ceremony_device(record)
        try:
            if locks_in_force(state.locks, now, user=caller.name, roles=caller.role_names, device_id=device.id):
                raise CeremonyError("device authentication refused: locked by an administrator")
            proof = finish_authentication(
                pending,
                device,
                replace(response, ceremony_id=pending.id),
                session_hash=caller.session_hash,
                now=now,
            )
            # Verified at begin, and sealed since: only its validity can have changed.
            try:
                login_identity, public_key = self._login_cert(login_cert)
            except TrustError:
                raise CeremonyError("the login certificate has expired; run 'tsh login'") from None
            login_identity = self._login_identity(caller, login_identity)
        except CeremonyError as err:
            # A failed answer spends the ceremony too: one attempt per challenge.
            with self._backend.begin() as store:
                with contextlib.suppress(NotFoundError):
                    store.spent_ceremonies.spend(pending.id, pending.expires + SPENT_CEREMONY_MARGIN)
                self._audit(
                    store, events.DEVICE_AUTHENTICATE, caller.name, False, reason=str(err), device=device_audit(device)
                )
            raise
        extensions = DeviceExtensions(
            device_id=device.id, asset_tag=device.asset_tag, credential_id=proof.credential.id
        )
        session_proof: SessionProof | None = None
        if target is None:
            if login_identity.device is not None:
                raise CeremonyError("the certificate already carries device extensions; run 'tsh login' for new ones")
            augmented = login_identity.with_device(extensions)
        else:
            session_proof = SessionProof(
                kind=target[0],
                target=target[1],
                time=now,
                expires=now + state.auth_preference.device_trust.session_proof_window,
                id=pending.id,
            )
            augmented = replace(login_identity, device=None).for_session(extensions, session_proof)
        new_ssh = issue_ssh_user_cert(self.context.user_ca, public_key, augmented)
        new_tls = None
        if session_proof is None or session_proof.kind != "ssh":
            new_tls = issue_x509_client_cert(self.context.user_ca, public_key, augmented)
        with self._backend.begin() as store:
            try:
                store.spent_ceremonies.spend(pending.id, pending.expires + SPENT_CEREMONY_MARGIN)
            except NotFoundError:
                raise CeremonyError("unknown or expired device ceremony") from None
            current, written = self._record_authentication(
                store, device, record.revision, self._record(pending, proof, now)
            )
            details: dict[str, dict[str, str]] = {}
            if session_proof is not None:
                details["target"] = {"kind": session_proof.kind, "id": session_proof.target}
                details["proof"] = {"id": session_proof.id, "expires": session_proof.expires.isoformat()}
            audited = [
                self.context.audit_entry(
                    events.DEVICE_AUTHENTICATE,
                    caller.name,
                    True,
                    device=device_audit(current, proof.credential.id),
                    event_log=proof.event_log,
                    **details,
                )
            ]
            if session_proof is None:
                audited.append(
                    self.context.audit_entry(
                        events.CERT_CREATE,
                        caller.name,
                        True,
                        cert_type="user",
                        identity={"user": caller.name, "expires": augmented.not_after.isoformat()},
                        device=device_audit(current, proof.credential.id),
                    )
                )
            store.audit.append_many(audited)
        # committed: the device's next ceremony reads this very document
        self._remember_device(written, current)
        return caller, AugmentedCerts(new_ssh, new_tls, current, written.body)


def _pending_target(body: Mapping[str, object]) -> tuple[str, str] | None:
    target = body.get("target")
    if target is None:
        return None
    if (
        not isinstance(target, Mapping)
        or not isinstance(target.get("kind"), str)
        or not isinstance(target.get("id"), str)
    ):
        raise CeremonyError("unknown or expired device ceremony")
    return str(target["kind"]), str(target["id"])
