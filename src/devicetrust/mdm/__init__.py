"""MDM inventory sync (docs/architecture.md, MDM sync): registers the devices an MDM knows about; never enrolls them.

``diff`` is the pure core (inventory observations vs stored devices -> what to write, what is missing);
``sink`` the narrow interface the sync writes through (in-process against the Backend, or remote);
``jamf`` the Jamf Pro client, sync engine and service (the fake Jamf server is in ``tests/fakes/jamf``).
"""
