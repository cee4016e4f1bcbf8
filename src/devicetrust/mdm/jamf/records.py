"""The fields of Jamf's inventory records that the sync reads, as the Jamf Pro OpenAPI declares them
(``shared/vendor-specs/jamf-pro-api-openapi.yaml``).

Every key may be missing (Jamf leaves out sections that were not asked for), and nothing here is checked when a
reply is decoded: :mod:`devicetrust.mdm.jamf.mapping` reads each value defensively.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["General", "Hardware", "InventoryRecord", "LocalUserAccount", "OperatingSystem"]


class General(TypedDict, total=False):
    """The general section: ComputerGeneral's fields, then MobileDeviceGeneral's."""

    name: str
    platform: str
    reportDate: str
    jamfBinaryVersion: str
    displayName: str
    osVersion: str
    osBuild: str
    osSupplementalBuildVersion: str
    lastInventoryUpdateDate: str


class Hardware(TypedDict, total=False):
    serialNumber: str
    modelIdentifier: str


class OperatingSystem(TypedDict, total=False):
    version: str
    build: str
    supplementalBuildVersion: str


class LocalUserAccount(TypedDict, total=False):
    username: str


class InventoryRecord(TypedDict, total=False):
    """A computers-inventory result (ComputerInventory: ``id`` and four sections), a mobile-devices/detail result
    (``mobileDeviceId``, general, hardware), or a mobile device fetched by id (MobileDeviceV2: flat, ``id``,
    ``modelIdentifier``, ``serialNumber``)."""

    id: str
    mobileDeviceId: str
    general: General
    hardware: Hardware
    operatingSystem: OperatingSystem
    localUserAccounts: list[LocalUserAccount]
    modelIdentifier: str
    serialNumber: str
