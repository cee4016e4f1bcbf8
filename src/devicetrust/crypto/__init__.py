"""Certificate authorities (:mod:`.ca`), SSH and X.509 certificates (:mod:`.certs`), the identity they carry
(:mod:`.identity`), key helpers (:mod:`.keys`). Pure: no I/O."""
