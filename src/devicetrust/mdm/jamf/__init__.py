"""Jamf Pro inventory sync: config, API client, sync engine and service (docs/architecture.md, MDM sync).

What the daemon calls (see :mod:`devicetrust.mdm.jamf.service` for the full recipe)::

    config = parse_jamf_service_config(raw_yaml.get("jamf_service"))   # ConfigError at start
    if config.enabled:
        JamfServiceThread(config, backend, audit=server.audit).start()  # or: await run_jamf_service(...)

The fake Jamf server for tests and the demo is ``tests/fakes/jamf/server.py``, outside the package.
"""

from devicetrust.mdm.jamf.client import InventoryPage, JamfClient, RetryPolicy
from devicetrust.mdm.jamf.config import (
    InventoryEntry,
    JamfServiceConfig,
    OAuthCredentials,
    PasswordCredentials,
    parse_jamf_service_config,
)
from devicetrust.mdm.jamf.engine import JamfSync, SyncProgress
from devicetrust.mdm.jamf.errors import JamfAPIError, JamfAuthError, JamfPermissionError
from devicetrust.mdm.jamf.service import JamfService, JamfServiceThread, run_jamf_service

__all__ = [
    "InventoryEntry",
    "InventoryPage",
    "JamfAPIError",
    "JamfAuthError",
    "JamfClient",
    "JamfPermissionError",
    "JamfService",
    "JamfServiceConfig",
    "JamfServiceThread",
    "JamfSync",
    "OAuthCredentials",
    "PasswordCredentials",
    "RetryPolicy",
    "SyncProgress",
    "parse_jamf_service_config",
    "run_jamf_service",
]
