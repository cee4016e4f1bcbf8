"""The auth service's wire protocol: every ``/v1/…`` request and response, as pydantic models.

The service validates requests and serializes responses with these (so ``/v1/openapi.json`` describes them), and
:class:`devicetrust.client.AuthApi` returns them. Domain values stay frozen dataclasses in ``devicetrust.types``;
routes and callers convert at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    NonNegativeInt,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# pydantic reads TypedDicts from typing_extensions only, before Python 3.12
from typing_extensions import TypedDict

#: No TTL the service grants comes near a year; larger requests are refused rather than converted.
MAX_TTL_SECONDS = 366 * 24 * 3600

#: A user, resource, role or trait name as it travels in requests; control characters make no sense in one.
Name = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
TraitValue = Annotated[str, StringConstraints(max_length=1024)]
Traits = Annotated[dict[Name, Annotated[list[TraitValue], Field(max_length=256)]], Field(max_length=256)]
RoleNames = Annotated[list[Name], Field(max_length=256)]
CertTTL = Annotated[int | None, Field(ge=60, le=MAX_TTL_SECONDS)]
TokenTTL = Annotated[int | None, Field(ge=1, le=MAX_TTL_SECONDS)]

#: A resource document (``kind``, ``version``, ``metadata``, ``spec``) as stored and as ``tctl get`` shows it;
#: its spec depends on the kind, so it is parsed by ``devicetrust.types.parse_resource``, not here.
ResourceDocument = dict[str, Any]
#: An audit event: ``id``, ``uid``, ``event``, ``code``, ``time``, ``user``, ``success`` and the event's own fields.
AuditEvent = dict[str, Any]
#: most observations, removals or identities one MDM request may carry: Jamf's largest page
MDM_MAX_BATCH_ITEMS = 2000
#: longest free text taken from an MDM agent (ids, serial numbers, names, reasons, notes)
MDM_MAX_TEXT = 1024
#: longest value an MDM agent may keep in the sync state (a partial sync's cut, the last full sync)
MDM_MAX_STATE_CHARS = 4096


class Message(BaseModel):
    """Base of every request and response: unknown request fields are ignored, as they always were."""


# ------------------------------------------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    kind: str = Field(description="stable machine-readable kind, e.g. validation, not_found, access_denied")
    message: str = Field(description="one line a user can act on")


class ErrorReply(BaseModel):
    """Every error the service answers with (4xx and 5xx)."""

    error: ErrorDetail


class Empty(Message):
    """The reply of an operation that has nothing to say beyond its success."""


# ------------------------------------------------------------------------------------------------ cluster
class DeviceTrustPreference(Message):
    mode: str
    auto_enroll: bool
    session_proof: str
    session_proof_ttl: str


class AuthPreference(Message):
    type: str
    second_factors: list[str]
    device_trust: DeviceTrustPreference


class PingResponse(Message):
    cluster_name: str
    server_version: str
    auth: AuthPreference


class ClusterCAs(Message):
    """Public halves of the cluster's certificate authorities."""

    user_ca_ssh: str
    user_ca_pem: str
    host_ca_ssh: str
    host_ca_pem: str


# ----------------------------------------------------------------------------------------- login, sessions
class LoginRequest(Message):
    user: Name
    password: str = Field(max_length=1024)
    public_key: str = Field(max_length=4096, description="PEM or OpenSSH P-256 public key")
    ttl_seconds: CertTTL = None


class BotJoinRequest(Message):
    token: str = Field(min_length=1, max_length=256)
    public_key: str = Field(max_length=4096)
    ttl_seconds: CertTTL = None


class SignupRequest(Message):
    token: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=1024)


class SignupResponse(Message):
    user: str


class LoginIdentity(Message):
    user: str
    roles: list[str]
    logins: list[str]
    bot_name: str | None


class LoginDeviceTrust(Message):
    enabled: bool
    auto_enroll: bool
    session_proof: str


class LoginResponse(ClusterCAs):
    session_token: str
    expires: str
    ssh_cert: str
    tls_cert: str
    identity: LoginIdentity
    cluster_name: str
    device_trust: LoginDeviceTrust


class WhoamiResponse(Message):
    user: str
    kind: str
    roles: list[str]
    logins: list[str]
    bot_name: str | None


# ------------------------------------------------------------------------------------- users, bots, tokens
class CreateUserRequest(Message):
    name: Name
    roles: RoleNames
    traits: Traits = Field(default_factory=dict)


class CreateUserResponse(Message):
    user: str
    invite_token: str


class UpdateUserRequest(Message):
    set_roles: RoleNames | None = None
    set_traits: Traits | None = None


class UpdateUserResponse(Message):
    user: str
    roles: list[str]


class CreateBotRequest(Message):
    name: Name
    roles: RoleNames
    traits: Traits = Field(default_factory=dict)
    token_ttl_seconds: TokenTTL = None


class CreateBotResponse(Message):
    bot: str
    token: str
    expires: str


class CreateTokenRequest(Message):
    type: Name
    ttl_seconds: TokenTTL = None


class CreateTokenResponse(Message):
    token: str
    type: str
    expires: str


class TokenInfo(Message):
    id: str
    type: str
    subject: str
    expires: str


class TokenList(Message):
    items: list[TokenInfo]


# ---------------------------------------------------------------------------------------------- resources
class PutResourceRequest(Message):
    resource: ResourceDocument
    force: bool = False


class PutResourceResponse(Message):
    kind: str
    name: str
    outcome: str


class ResourceList(Message):
    items: list[ResourceDocument]


# ------------------------------------------------------------------------------------------------ devices
class AddDeviceRequest(Message):
    os_type: Name
    asset_tag: Name
    create_enroll_token: bool = False
    enroll_token_ttl_seconds: TokenTTL = None


class EnrollTokenRequest(Message):
    ttl_seconds: TokenTTL = None


class DeviceWithToken(Message):
    device: ResourceDocument
    enroll_token: str | None


#: ``GET /v1/devices`` streams the listing in this media type when the request accepts it: one device per line,
#: then one last line, :class:`DeviceStreamEnd` (``{"next_page_token": …}``), or, when the listing failed after it
#: began, an :class:`ErrorReply`. A stream without that last line was cut short.
NDJSON_MEDIA_TYPE = "application/x-ndjson"
DEFAULT_DEVICE_PAGE_SIZE = 100
#: Largest page of a JSON reply; a stream may hold any number of devices.
MAX_DEVICE_PAGE_SIZE = 1000
MAX_DEVICE_STREAM_SIZE = 2**31 - 1
#: A filter's text: an asset tag, an owner, a source name, a search string.
FilterText = Annotated[str, StringConstraints(max_length=256)]
#: ``resource``: each device's whole document; ``summary``: the listing's columns (:class:`DeviceSummary`).
DeviceView = Literal["resource", "summary"]


class DeviceListQuery(Message):
    """The query of ``GET /v1/devices``: the inventory in (asset tag, id) order, filtered by the service. Every
    filter given must match. A misspelt parameter is refused rather than ignored: ignoring it would list more
    than was asked for."""

    model_config = ConfigDict(extra="forbid")

    page_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DEVICE_STREAM_SIZE,
        description=f"JSON: the page's size, at most {MAX_DEVICE_PAGE_SIZE} (default {DEFAULT_DEVICE_PAGE_SIZE}); "
        "a stream of JSON lines: how many devices to send (default: all)",
    )
    page_token: str | None = Field(
        default=None, max_length=4096, description="the next_page_token of an earlier reply: resume after it"
    )
    view: DeviceView = "resource"
    search: FilterText | None = Field(
        default=None, description="a case-insensitive substring of the asset tag, the owner or the device id"
    )
    asset_tag: FilterText | None = Field(default=None, description="exactly this asset tag (needs read, not list)")
    os: FilterText | None = Field(default=None, description="linux, macos, windows, ios or ipados")
    enroll_status: FilterText | None = Field(default=None, description="enrolled or not_enrolled")
    source: FilterText | None = Field(default=None, description='the MDM source\'s name; "" for devices of none')
    owner: FilterText | None = Field(default=None, description='the owning user; "" for devices nobody owns')


class DeviceStreamEnd(Message):
    """The last line of a device stream."""

    next_page_token: str | None = Field(description="continues after the streamed devices; null at the end")


class DeviceList(Message):
    items: list[ResourceDocument]
    next_page_token: str | None


class DeviceSummary(Message):
    """A device as ``tctl devices ls`` shows it."""

    id: str
    os_type: str
    asset_tag: str
    enroll_status: str
    owner: str = Field(description='"" when nobody owns the device')
    source: str = Field(description='the MDM source\'s name; "" for a device registered by hand')


class DeviceSummaryList(Message):
    items: list[DeviceSummary]
    next_page_token: str | None


# The ceremony messages' shapes. The service checks them field by field with its own one-line errors
# (devicetrust.ceremony.messages), so requests carry them as plain JSON objects documented by these.
class CollectedDeviceData(TypedDict):
    """What a device reports about itself (Teleport's DeviceCollectedData); every value at most 256 characters."""

    collect_time: str
    os_type: str
    serial_number: str
    model_identifier: NotRequired[str]
    os_id: NotRequired[str]
    os_version: NotRequired[str]
    os_build: NotRequired[str]
    os_username: NotRequired[str]
    system_serial_number: NotRequired[str]
    base_board_serial_number: NotRequired[str]
    reported_asset_tag: NotRequired[str]


class TpmEnrollment(TypedDict):
    """A TPM's enrollment: its EK (certificate or public key, DER) and its attestation key (a TPMT_PUBLIC), base64."""

    ek_cert_der: NotRequired[str | None]
    ek_public_der: NotRequired[str | None]
    ak_public: str


class KeyEnrollment(TypedDict):
    """A Secure Enclave or software key's enrollment: its P-256 public key (PKIX DER, base64) and
    ``attestation_type``, ``macos_secure_enclave`` or ``unsafe_software``."""

    public_key_der: str
    attestation_type: str


class QuoteAnswer(TypedDict):
    """A TPM quote over the challenge's nonce: TPMS_ATTEST and its signature (base64), the quoted PCRs (index to
    64 hex digits) and the measured-boot event log (base64; may be empty)."""

    attest: str
    signature: str
    pcr_values: dict[str, str]
    event_log: NotRequired[str]


class ChallengeAnswer(TypedDict):
    """A device's answer to a ceremony's challenge (the body of ``finish``): the activated secret and a quote (TPM)
    or a signature (Secure Enclave, software key), base64."""

    ceremony_id: str
    activated_secret: NotRequired[str]
    quote: NotRequired[QuoteAnswer | None]
    signature: NotRequired[str]


@dataclass(frozen=True)
class DocumentedAs:
    """Field metadata: the OpenAPI schema shows ``shape`` for a value the service checks by hand."""

    shape: type

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(TypeAdapter(self.shape).core_schema)


class EnrollBeginRequest(Message):
    """``token`` for a token enrollment; without it, the caller's session asks for auto-enrollment."""

    token: str | None = Field(default=None, max_length=256)
    credential_id: str = Field(min_length=1, max_length=256)
    device_data: Annotated[dict[str, object], DocumentedAs(CollectedDeviceData)]
    tpm: Annotated[dict[str, object], DocumentedAs(TpmEnrollment)] | None = None
    key: Annotated[dict[str, object], DocumentedAs(KeyEnrollment)] | None = None


class NodeInfo(Message):
    """An SSH node as ``GET /v1/nodes`` lists it."""

    # stored documents may carry fields a later version added: pass them on
    model_config = ConfigDict(extra="allow")

    host_id: str
    hostname: str
    addr: str
    labels: dict[str, str]
    joined: str
    last_seen: str


class SessionTarget(Message):
    """What a session proof is for: ``ssh`` + the node's host id, ``db`` + the database, ``kube`` + the cluster."""

    kind: Literal["ssh", "db", "kube"]
    id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:@/-]+$")
    #: ``ssh`` only: ``id`` is the node as the user named it (host id, host name or ``<hostname>.<cluster>``). The
    #: auth service resolves it among the nodes the caller may reach, as ``GET /v1/nodes`` lists them, binds the
    #: proof to that node's host id and names the node in its reply: one round trip less before each session.
    by_name: bool = False


class AuthenticateBeginRequest(Message):
    credential_id: str = Field(min_length=1, max_length=256)
    device_data: Annotated[dict[str, object], DocumentedAs(CollectedDeviceData)]
    ssh_cert: str = Field(max_length=16 * 1024)
    #: With a target: a session proof for it (session certificates); without: login-time device certificates.
    target: SessionTarget | None = None


class ChallengeMessage(Message):
    """The reply to a ceremony's ``begin`` (base64 fields; empty when the ceremony does not use them)."""

    ceremony_id: str
    nonce: str
    challenge: str
    credential_blob: str
    encrypted_secret: str
    #: The node the proof is bound to, when the request named it (``SessionTarget.by_name``).
    node: NodeInfo | None = None


class DeviceCertificates(Message):
    ssh_cert: str
    #: PEM; empty for a session certificate to an SSH node (only databases and Kubernetes take X.509)
    tls_cert: str
    device: ResourceDocument


# -------------------------------------------------------------------------------------------------- nodes
#: The agents that join with a token: SSH nodes ("node" tokens), database services ("db" tokens) and kube
#: services ("kube" tokens).
AgentRole = Literal["node", "db", "kube"]
#: A Kubernetes cluster's name in the cluster (what ``tsh kube`` commands and session proofs name).
KubeClusterName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
#: A database's name in the cluster (what ``tsh db`` commands and session proofs name).
DatabaseName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class AgentEvent(TypedDict):
    """An audit event an agent reports: its name (``session.start``, ``db.session.end``, ``kube.request``…), who
    it is about, whether it succeeded, and the event's own fields (session id, addresses, the device…)."""

    event: str
    user: NotRequired[str]
    success: NotRequired[bool]


#: One event in ``POST /v1/nodes/events``: any fields beyond those named are the event's own.
AgentEventBody = Annotated[dict[str, object], DocumentedAs(AgentEvent)]
#: Most events one ``POST /v1/nodes/events`` may carry.
MAX_AGENT_EVENT_BATCH = 500
#: Largest body an agent sends with a batch of events, below the service's limit on request bodies (1 MiB).
MAX_AGENT_EVENT_BATCH_BYTES = 1_000_000


class AgentEventBatch(Message):
    """The body of ``POST /v1/nodes/events``: audit events in the order they happened, stored together.

    A body that is one event (an ``event`` field at the top), as agents sent before batches, is taken as a batch
    of one; a refusal of it is then an error reply, as it always was.
    """

    events: list[AgentEventBody] = Field(min_length=1, max_length=MAX_AGENT_EVENT_BATCH)
    _one_event: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _accept_one_event(cls, data: object, handler: ModelWrapValidatorHandler[AgentEventBatch]) -> AgentEventBatch:
        if isinstance(data, dict) and "event" in data:
            batch = handler({"events": [data]})
            batch._one_event = True
            return batch
        return handler(data)

    @property
    def one_event(self) -> bool:
        """The body was one event, not a batch."""
        return self._one_event


class RefusedAgentEvent(Message):
    """An event of a batch the service will never take (its ``index`` in the batch), and why."""

    index: NonNegativeInt
    error: str


class AgentEventBatchResult(Message):
    """The events of a batch were stored, all but those ``refused``."""

    stored: NonNegativeInt
    refused: list[RefusedAgentEvent] = Field(default_factory=list)


class NodeJoinRequest(Message):
    token: str = Field(min_length=1, max_length=256)
    hostname: str = Field(min_length=1, max_length=253)
    addr: str = Field(min_length=3, max_length=300)
    labels: dict[str, str] = Field(default_factory=dict)
    public_key: str = Field(max_length=4096)
    role: AgentRole = "node"


class NodeJoinResponse(ClusterCAs):
    host_id: str
    host_cert: str
    session_token: str
    cluster_name: str
    #: A database service's TLS server certificate (host CA) for its key; "" for SSH nodes.
    tls_cert: str = ""


class DatabaseInfo(Message):
    """One database a database service serves, as it announces it."""

    name: DatabaseName
    protocol: Literal["postgres"]
    uri: str = Field(min_length=1, max_length=1024)
    labels: dict[str, str] = Field(default_factory=dict)


class KubeClusterInfo(Message):
    """One Kubernetes cluster a kube service serves, as it announces it."""

    name: KubeClusterName
    labels: dict[str, str] = Field(default_factory=dict)


class HeartbeatRequest(Message):
    addr: str = Field(min_length=3, max_length=300)
    labels: dict[str, str] = Field(default_factory=dict)
    #: a database service's databases (ignored for SSH nodes)
    databases: Annotated[list[DatabaseInfo], Field(max_length=256)] = Field(default_factory=list)
    #: a kube service's Kubernetes clusters (ignored for the others)
    kube_clusters: Annotated[list[KubeClusterInfo], Field(max_length=256)] = Field(default_factory=list)


class NodeState(Message):
    """Everything a node needs to decide on sessions by itself while the auth service is away."""

    cluster_name: str
    roles: list[ResourceDocument]
    cluster_auth_preference: ResourceDocument
    locks: list[ResourceDocument]
    user_ca_ssh: str
    generated: str


class NodeList(Message):
    items: list[NodeInfo]


# ---------------------------------------------------------------------------------------------- databases
class DatabaseService(Message):
    """The database service serving a database: connect to ``addr`` and expect a TLS certificate from the
    host CA naming ``host_id``."""

    host_id: str
    hostname: str
    addr: str


class DatabaseServer(Message):
    """One database the caller's roles grant (``tsh db ls``)."""

    name: str
    protocol: str
    uri: str
    labels: dict[str, str]
    service: DatabaseService
    #: the database users and names the caller's roles allow here ("*": any not denied)
    allowed_users: list[str]
    allowed_names: list[str]
    last_seen: str


class DatabaseList(Message):
    items: list[DatabaseServer]


class DatabaseCertRequest(Message):
    """``tsh db login``: an X.509 certificate for the caller's login key, routed to one database."""

    database: DatabaseName
    ssh_cert: str = Field(max_length=16 * 1024)
    db_user: str = Field(default="", max_length=63)
    db_name: str = Field(default="", max_length=63)


class DatabaseCertResponse(Message):
    tls_cert: str
    database: DatabaseServer


# ------------------------------------------------------------------------------------------- kubernetes
class KubeCluster(Message):
    """One Kubernetes cluster the caller's roles grant (``tsh kube ls``), and the kube service serving it:
    connect to ``service.addr`` and expect a TLS certificate from the host CA naming ``service.host_id``."""

    name: str
    labels: dict[str, str]
    service: DatabaseService
    #: the Kubernetes users and groups the caller's roles allow on it
    kubernetes_users: list[str]
    kubernetes_groups: list[str]
    last_seen: str


class KubeClusterList(Message):
    items: list[KubeCluster]


# ---------------------------------------------------------------------------------------------------- mdm
class MdmJoinRequest(Message):
    token: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)


class MdmJoinResponse(Message):
    session_token: str
    cluster_name: str


#: free text from an MDM agent (ids, serial numbers, names, reasons, notes)
MdmText = Annotated[str, StringConstraints(max_length=MDM_MAX_TEXT)]
#: an ISO 8601 time with its UTC offset
MdmTime = AwareDatetime


class MdmSource(Message):
    """Which MDM a batch comes from: the session's source name and the MDM's kind (``jamf``)."""

    name: str = Field(max_length=64)
    origin: MdmText


class MdmProfile(Message):
    """``spec.profile`` of a device as the MDM reports it (checked again as a device profile by the service)."""

    model_identifier: str = ""
    os_version: str = ""
    os_build: str = ""
    os_build_supplemental: str = ""
    os_usernames: list[str] = Field(default_factory=list)
    jamf_binary_version: str = ""
    external_id: str = ""
    update_time: MdmTime | None = None


class MdmObservation(Message):
    """One device as the MDM reports it."""

    external_id: MdmText
    os_type: str = Field(max_length=64)
    asset_tag: MdmText
    profile: MdmProfile = Field(default_factory=MdmProfile)
    #: when the MDM last heard from the device
    report_time: MdmTime | None = None
    #: the MDM's name for the device, for logs only
    name: MdmText | None = ""


class MdmApplyRequest(Message):
    source: MdmSource
    observations: list[MdmObservation] = Field(max_length=MDM_MAX_BATCH_ITEMS)
    #: keys (``os_type/asset_tag``) of observations that were absent when the agent looked them up
    new_keys: list[MdmText] = Field(default_factory=list, max_length=MDM_MAX_BATCH_ITEMS)


class MdmRemoval(Message):
    """A device to delete, only if it still is the source's device with this identity."""

    device_id: str = Field(max_length=64)
    os_type: str = Field(max_length=64)
    asset_tag: MdmText
    reason: MdmText | None = ""


class MdmDeleteRequest(Message):
    source: MdmSource
    removals: list[MdmRemoval] = Field(max_length=MDM_MAX_BATCH_ITEMS)


class MdmStateUpdate(Message):
    value: str = Field(max_length=MDM_MAX_STATE_CHARS)


class MdmSyncReport(Message):
    """What one sync did (its ``mdm.sync`` audit event)."""

    source: str = Field(max_length=64)
    inventory: str = Field(max_length=4096)
    kind: str = Field(max_length=16)
    started: MdmTime
    origin: str = Field(default="jamf", max_length=32)
    duration_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    pages: NonNegativeInt = 0
    records: NonNegativeInt = 0
    created: NonNegativeInt = 0
    updated: NonNegativeInt = 0
    unchanged: NonNegativeInt = 0
    skipped: NonNegativeInt = 0
    foreign: NonNegativeInt = 0
    duplicates: NonNegativeInt = 0
    conflicts: NonNegativeInt = 0
    missing: NonNegativeInt = 0
    deleted: NonNegativeInt = 0
    kept: NonNegativeInt = 0
    error: str | None = Field(default=None, max_length=4096)
    notes: list[MdmText] = Field(default_factory=list, max_length=64)


class MdmDevice(Message):
    id: str
    os_type: str
    asset_tag: str
    source_name: str | None
    source_origin: str | None
    external_id: str | None
    revision: int
    fingerprint: str = Field(description="64-bit unsigned, as 16 hex digits")


class MdmDevicePage(Message):
    items: list[MdmDevice]
    next_page_token: str | None


class MdmIdentity(Message):
    """A device's identity: its OS and serial number (asset tag)."""

    os_type: str = Field(min_length=1, max_length=64)
    asset_tag: str = Field(min_length=1, max_length=MDM_MAX_TEXT)


class MdmLookupRequest(Message):
    identities: list[MdmIdentity] = Field(max_length=MDM_MAX_BATCH_ITEMS)


class MdmDeviceList(Message):
    """The session's own devices among those asked for (any others are left out)."""

    items: list[MdmDevice]


class MdmSourceDevice(Message):
    """A device of the session's source, without what a missing check does not need."""

    id: str
    os_type: str
    asset_tag: str
    source_origin: str | None
    external_id: str | None


class MdmSourceDevicePage(Message):
    items: list[MdmSourceDevice]
    next_page_token: str | None


class MdmApplyResponse(Message):
    created: NonNegativeInt
    updated: NonNegativeInt
    unchanged: NonNegativeInt
    foreign: NonNegativeInt
    conflicts: NonNegativeInt


class MdmDeleteResponse(Message):
    deleted: NonNegativeInt


class MdmStateValue(Message):
    value: str | None


# ------------------------------------------------------------------------------------------------- audit
class EventPage(Message):
    items: list[AuditEvent]
    next_after: int | None
