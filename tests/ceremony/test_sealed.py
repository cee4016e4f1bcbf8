"""Sealed pending state: whatever is changed, truncated, forged or sealed under another key is refused with the
one ceremony message."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicetrust.ceremony.messages import MAX_CEREMONY_ID_CHARS, CeremonyError
from devicetrust.ceremony.sealed import SEALED_PREFIX, open_sealed, seal

KEY = bytes(range(32))
STATE = {"id": "c-1", "user": "alice", "challenge": "AAAA", "collected": {"os_type": "linux"}, "n": 3}
UNKNOWN = "unknown or expired device ceremony"


def test_what_is_sealed_opens_unchanged() -> None:
    sealed = seal(KEY, STATE)
    assert sealed.startswith(SEALED_PREFIX)
    assert open_sealed(KEY, sealed) == STATE


def test_another_key_opens_nothing() -> None:
    with pytest.raises(CeremonyError, match=UNKNOWN):
        open_sealed(secrets.token_bytes(32), seal(KEY, STATE))


def test_short_keys_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="too short"):
        seal(b"short", STATE)
    with pytest.raises(ValueError, match="too short"):
        open_sealed(b"short", seal(KEY, STATE))


@given(st.data())
def test_any_changed_character_is_refused(data: st.DataObject) -> None:
    sealed = seal(KEY, STATE)
    index = data.draw(st.integers(0, len(sealed) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != sealed[index]))
    tampered = sealed[:index] + replacement + sealed[index + 1 :]
    with pytest.raises(CeremonyError, match=UNKNOWN):
        open_sealed(KEY, tampered)


@given(st.integers(0, 200))
def test_truncations_are_refused(cut: int) -> None:
    sealed = seal(KEY, STATE)
    with pytest.raises(CeremonyError, match=UNKNOWN):
        open_sealed(KEY, sealed[: max(0, len(sealed) - 1 - cut)])


@pytest.mark.parametrize(
    "sealed",
    [
        "",
        "s1.",
        "s1..",
        "s1.e30",  # no tag
        "s2." + seal(KEY, STATE)[3:],  # another version
        "s1.e30.=====",
        "s1.é.AAAA",
        "s1." + "A" * MAX_CEREMONY_ID_CHARS,
        "9b0c0ad6-6a53-4a5e-9e0e-6d8e4b7b1a11",  # a plain ceremony id
    ],
)
def test_malformed_tokens_are_refused(sealed: str) -> None:
    with pytest.raises(CeremonyError, match=UNKNOWN):
        open_sealed(KEY, sealed)


def test_a_validly_sealed_non_object_is_refused() -> None:
    # Only the server seals; it never seals anything but objects, yet opening checks the shape anyway.
    import base64
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(b"[1,2]").rstrip(b"=").decode()
    tag = hmac.new(KEY, f"{SEALED_PREFIX}{payload}".encode(), hashlib.sha256).digest()
    forged = f"{SEALED_PREFIX}{payload}.{base64.urlsafe_b64encode(tag).rstrip(b'=').decode()}"
    with pytest.raises(CeremonyError, match=UNKNOWN):
        open_sealed(KEY, forged)


def test_only_the_canonical_spelling_of_the_tag_opens() -> None:
    sealed = seal(KEY, STATE)
    last = sealed[-1]
    # the last base64url character of a 32-byte tag carries 4 bits; its 2 spare bits must be zero
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for sibling in alphabet[alphabet.index(last) & ~3 : (alphabet.index(last) & ~3) + 4]:
        if sibling != last:
            with pytest.raises(CeremonyError, match=UNKNOWN):
                open_sealed(KEY, sealed[:-1] + sibling)
