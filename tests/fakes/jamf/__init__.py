"""A fake Jamf Pro server (:mod:`tests.fakes.jamf.server`) and the RSQL filters it evaluates."""
