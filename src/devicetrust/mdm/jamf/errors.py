"""What talking to Jamf Pro can go wrong with. All are :class:`~devicetrust.errors.DevicetrustError`\\ s.

JamfAPIError (DevicetrustError)      Jamf answered with an error (4xx/5xx after retries), or an unusable reply;
                                     a sync fails and is retried at its next period
JamfAuthError (AuthenticationError)  credentials refused, or a fresh token refused again: fatal, the service
                                     stops (retrying would only lock the API client out)
JamfPermissionError (AccessDeniedError)  403: the API role lacks a privilege (Read Computers…): fatal
ConnectionFailedError                Jamf unreachable after retries
TrustError                           Jamf's TLS certificate cannot be verified
"""

from __future__ import annotations

from devicetrust.errors import AccessDeniedError, AuthenticationError, DevicetrustError

__all__ = ["JamfAPIError", "JamfAuthError", "JamfPermissionError"]


class JamfAPIError(DevicetrustError):
    kind = "jamf_api"
    http_status = 502

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        #: Jamf's HTTP status (0: no usable reply)
        self.status = status
        #: the first error code of Jamf's envelope ({"httpStatus", "errors": [{"code", …}]})
        self.code = code


class JamfAuthError(AuthenticationError):
    kind = "jamf_auth"


class JamfPermissionError(AccessDeniedError):
    kind = "jamf_permission"
