"""The one exception root of devicetrust.

Every error a user can cause derives from :class:`DevicetrustError`. Its ``str()`` is the one-line message shown
to users (CLIs print it after ``ERROR: ``; the auth service returns it as ``{"error": {"kind", "message"}}``).
Anything that is not a ``DevicetrustError`` is a bug and is allowed to show a traceback.

    DevicetrustError
    ├── ValidationError        bad input: resource fields, YAML, flags (names the field)
    ├── ConfigError            bad devicetrust.yaml or environment
    ├── NotFoundError          the named thing does not exist
    ├── AlreadyExistsError     create of something that exists
    ├── ConflictError          concurrent or stale write
    ├── AuthenticationError    who you are could not be established (wrong password, bad/expired session)
    │   └── SessionExpiredError
    ├── AccessDeniedError      who you are is known but not allowed (names the missing verb)
    ├── RateLimitedError       too many attempts; carries retry_after seconds
    ├── TrustError             a pinned CA changed, or a peer cannot be verified
    └── ConnectionFailedError  the server cannot be reached
"""

from __future__ import annotations


class DevicetrustError(Exception):
    """Root of every user-facing error. ``str(err)`` is one line, safe to show."""

    #: machine-readable kind, stable across releases (used on the wire)
    kind = "error"
    #: HTTP status the auth service answers with
    http_status = 400
    #: CLI exit code
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _ERROR_CLASSES.setdefault(cls.kind, cls)

    def __str__(self) -> str:
        return self.message


#: Every error class by its wire kind, registered as each is defined.
_ERROR_CLASSES: dict[str, type[DevicetrustError]] = {DevicetrustError.kind: DevicetrustError}


class ValidationError(DevicetrustError):
    kind = "validation"
    http_status = 400


class ConfigError(DevicetrustError):
    kind = "config"
    http_status = 500
    exit_code = 2


class NotFoundError(DevicetrustError):
    kind = "not_found"
    http_status = 404


class AlreadyExistsError(DevicetrustError):
    kind = "already_exists"
    http_status = 409


class ConflictError(DevicetrustError):
    kind = "conflict"
    http_status = 409


class AuthenticationError(DevicetrustError):
    kind = "authentication"
    http_status = 401


class SessionExpiredError(AuthenticationError):
    kind = "session_expired"


class AccessDeniedError(DevicetrustError):
    kind = "access_denied"
    http_status = 403


class RateLimitedError(DevicetrustError):
    kind = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TrustError(DevicetrustError):
    kind = "trust"
    http_status = 400


class ConnectionFailedError(DevicetrustError):
    kind = "connection"
    http_status = 503


def error_class(kind: str) -> type[DevicetrustError]:
    """The error class a wire ``kind`` names: the first defined with it, wherever it lives (the ceremony, device
    and TPM errors are defined next to their code); ``DevicetrustError`` for kinds this version does not know."""
    return _ERROR_CLASSES.get(kind, DevicetrustError)
