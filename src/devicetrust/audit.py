"""Audit event names and codes, shared by every writer of audit events (the auth service, the MDM sync);
see docs/architecture.md, Audit events. Codes follow Teleport's where it defines them."""

from __future__ import annotations

from typing import Final

USER_LOGIN: Final = ("user.login", "T1000I")
USER_LOGIN_FAILURE: Final = ("user.login", "T1000W")
USER_CREATE: Final = ("user.create", "T1002I")
USER_UPDATE: Final = ("user.update", "T1003I")
USER_DELETE: Final = ("user.delete", "T1004I")
USER_PASSWORD_CHANGE: Final = ("user.password_change", "T1005I")
USER_SIGNUP_FAILURE: Final = ("user.password_change", "T1005W")
ROLE_CREATE: Final = ("role.created", "T9000I")
ROLE_DELETE: Final = ("role.deleted", "T9001I")
ROLE_UPDATE: Final = ("role.updated", "T9002I")
CAP_UPDATE: Final = ("cluster_auth_preference.update", "TCAUTH001I")
BOT_CREATE: Final = ("bot.create", "TB001I")
BOT_DELETE: Final = ("bot.delete", "TB003I")
BOT_JOIN: Final = ("bot.join", "TJ001I")
BOT_JOIN_FAILURE: Final = ("bot.join", "TJ001E")
TOKEN_CREATE: Final = ("join_token.create", "TJT00I")
TOKEN_DELETE: Final = ("join_token.delete", "TJT01I")
CERT_CREATE: Final = ("cert.create", "TC000I")
DEVICE_CREATE: Final = ("device.create", "TV001I")
DEVICE_DELETE: Final = ("device.delete", "TV002I")
DEVICE_TOKEN_CREATE: Final = ("device.token.create", "TV003I")
DEVICE_TOKEN_SPENT: Final = ("device.token.spent", "TV004I")
DEVICE_ENROLL: Final = ("device.enroll", "TV005I")
DEVICE_AUTHENTICATE: Final = ("device.authenticate", "TV006I")
DEVICE_UPDATE: Final = ("device.update", "TV007I")
LOCK_CREATE: Final = ("lock.created", "TLK00I")
LOCK_DELETE: Final = ("lock.deleted", "TLK01I")
#: the summary of one MDM sync (counts, duration); W: the sync failed
MDM_SYNC: Final = ("mdm.sync", "TMDM001I")
MDM_SYNC_FAILURE: Final = ("mdm.sync", "TMDM001W")
