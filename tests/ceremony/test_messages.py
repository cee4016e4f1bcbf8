"""The ceremonies' wire codecs: strict decoding (one CeremonyError naming the field) and lossless round trips."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from tests.ceremony.conftest import CEREMONY_ID, exactly

from devicetrust.ceremony.messages import (
    MAX_BLOB_B64,
    MAX_CEREMONY_ID_CHARS,
    MAX_COLLECTED_FIELD_CHARS,
    MAX_EK_CERT_B64,
    MAX_EVENT_LOG_B64,
    MAX_ID_CHARS,
    MAX_KEY_B64,
    MAX_PCRS,
    CeremonyError,
    Challenge,
    ChallengeResponse,
    CollectedData,
    KeyEnrollPayload,
    QuoteResponse,
    TPMEnrollPayload,
    b64d,
    b64e,
)
from devicetrust.errors import ValidationError

Decoder = Callable[[Any], object]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def via_json(value: dict[str, Any]) -> Any:
    """What the server's JSON parser hands the decoder."""
    return json.loads(json.dumps(value))


def refused(decoder: Decoder, data: Any, message: str) -> None:
    with pytest.raises(CeremonyError, match=exactly(message)):
        decoder(data)


#: Base64 text that base64.b64decode(validate=True) refuses
BAD_BASE64 = ["%%%%", "YWJj\n", "YWJjZA", "YW=JjZA==", "é", "YWJj ZA==", "-_-_"]


# -- b64d ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 1, b"YWJj", ["YWJj"], {"a": 1}, 1.5, True])
def test_b64d_refuses_non_text(value: Any) -> None:
    with pytest.raises(CeremonyError, match=exactly("f: expected base64 text")):
        b64d(value, "f", 100)


@pytest.mark.parametrize("value", BAD_BASE64)
def test_b64d_refuses_bad_base64(value: str) -> None:
    with pytest.raises(CeremonyError, match=exactly("f: not valid base64")):
        b64d(value, "f", 100)


def test_b64d_bounds_and_emptiness() -> None:
    assert b64d("YWJj", "f", 4) == b"abc"
    with pytest.raises(CeremonyError, match=exactly("f: larger than 3 characters")):
        b64d("YWJj", "f", 3)
    with pytest.raises(CeremonyError, match=exactly("f: must not be empty")):
        b64d("", "f", 3)
    assert b64d("", "f", 3, allow_empty=True) == b""


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(range(256)), b"\xff" * 33])
def test_b64_round_trip(data: bytes) -> None:
    assert b64d(b64e(data), "f", 1000, allow_empty=True) == data


# -- TPMEnrollPayload ---------------------------------------------------------------------------------------------


TPM_JSON = {"ek_cert_der": b64(b"\x30cert"), "ek_public_der": b64(b"\x30key"), "ak_public": b64(b"\x00\x23ak")}


@pytest.mark.parametrize(
    "payload",
    [
        TPMEnrollPayload(ek_cert_der=b"\x30cert", ek_public_der=b"\x30key", ak_public=b"\x00\x23ak"),
        TPMEnrollPayload(ek_cert_der=b"\x30cert", ek_public_der=None, ak_public=b"ak"),
        TPMEnrollPayload(ek_cert_der=None, ek_public_der=b"\x30key", ak_public=b"ak"),
        TPMEnrollPayload(ek_cert_der=None, ek_public_der=None, ak_public=bytes(range(256))),
    ],
    ids=["both", "cert", "key", "neither"],
)
def test_tpm_payload_round_trip(payload: TPMEnrollPayload) -> None:
    assert TPMEnrollPayload.from_json(via_json(payload.to_json())) == payload


def test_tpm_payload_absent_ek_fields_are_none() -> None:
    assert TPMEnrollPayload.from_json({"ak_public": b64(b"ak")}) == TPMEnrollPayload(None, None, b"ak")


@pytest.mark.parametrize("data", [None, [], "tpm", 1, [("ak_public", "YWs=")]])
def test_tpm_payload_must_be_an_object(data: Any) -> None:
    refused(TPMEnrollPayload.from_json, data, "tpm: expected an object")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ak_public": None}, "tpm.ak_public: expected base64 text"),
        ({"ak_public": 12}, "tpm.ak_public: expected base64 text"),
        ({"ak_public": ""}, "tpm.ak_public: must not be empty"),
        ({"ak_public": "A" * (MAX_KEY_B64 + 4)}, f"tpm.ak_public: larger than {MAX_KEY_B64} characters"),
        ({"ak_public": "%%%%"}, "tpm.ak_public: not valid base64"),
        ({"ek_cert_der": 7}, "tpm.ek_cert_der: expected base64 text"),
        ({"ek_cert_der": ""}, "tpm.ek_cert_der: must not be empty"),
        ({"ek_cert_der": "A" * (MAX_EK_CERT_B64 + 4)}, f"tpm.ek_cert_der: larger than {MAX_EK_CERT_B64} characters"),
        ({"ek_cert_der": "YWJjZA"}, "tpm.ek_cert_der: not valid base64"),
        ({"ek_public_der": ["x"]}, "tpm.ek_public_der: expected base64 text"),
        ({"ek_public_der": ""}, "tpm.ek_public_der: must not be empty"),
        ({"ek_public_der": "A" * (MAX_KEY_B64 + 4)}, f"tpm.ek_public_der: larger than {MAX_KEY_B64} characters"),
        ({"ek_public_der": "é"}, "tpm.ek_public_der: not valid base64"),
    ],
)
def test_tpm_payload_field_errors(changes: dict[str, Any], message: str) -> None:
    refused(TPMEnrollPayload.from_json, {**TPM_JSON, **changes}, message)


def test_tpm_payload_missing_ak_is_refused() -> None:
    data = {k: v for k, v in TPM_JSON.items() if k != "ak_public"}
    refused(TPMEnrollPayload.from_json, data, "tpm.ak_public: expected base64 text")


def test_tpm_payload_sizes_at_the_limit_are_accepted() -> None:
    at_limit = "A" * MAX_EK_CERT_B64
    assert TPMEnrollPayload.from_json({**TPM_JSON, "ek_cert_der": at_limit}).ek_cert_der == bytes(
        MAX_EK_CERT_B64 // 4 * 3
    )


# -- KeyEnrollPayload ---------------------------------------------------------------------------------------------


BAD_KEY_TYPE = "key.attestation_type: expected one of macos_secure_enclave, unsafe_software"


@pytest.mark.parametrize("kind", ["macos_secure_enclave", "unsafe_software"])
def test_key_payload_round_trip(kind: str) -> None:
    payload = KeyEnrollPayload(public_key_der=b"\x30\x59" + bytes(89), attestation_type=kind)
    assert KeyEnrollPayload.from_json(via_json(payload.to_json())) == payload


@pytest.mark.parametrize("data", [None, [], "key", 0])
def test_key_payload_must_be_an_object(data: Any) -> None:
    refused(KeyEnrollPayload.from_json, data, "key: expected an object")


@pytest.mark.parametrize("kind", [None, "", "tpm_ekpub", "MACOS_SECURE_ENCLAVE", 1, ["unsafe_software"]])
def test_key_payload_attestation_type_is_checked(kind: Any) -> None:
    data = {"public_key_der": b64(b"key"), "attestation_type": kind}
    refused(
        KeyEnrollPayload.from_json, data, "key.attestation_type: expected one of macos_secure_enclave, unsafe_software"
    )


def test_key_payload_missing_attestation_type_is_refused() -> None:
    refused(
        KeyEnrollPayload.from_json,
        {"public_key_der": b64(b"key")},
        BAD_KEY_TYPE,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "key.public_key_der: expected base64 text"),
        (5, "key.public_key_der: expected base64 text"),
        ("", "key.public_key_der: must not be empty"),
        ("A" * (MAX_KEY_B64 + 4), f"key.public_key_der: larger than {MAX_KEY_B64} characters"),
        ("%%%%", "key.public_key_der: not valid base64"),
    ],
)
def test_key_payload_key_errors(value: Any, message: str) -> None:
    refused(KeyEnrollPayload.from_json, {"public_key_der": value, "attestation_type": "unsafe_software"}, message)


def test_key_payload_missing_key_is_refused() -> None:
    refused(
        KeyEnrollPayload.from_json, {"attestation_type": "unsafe_software"}, "key.public_key_der: expected base64 text"
    )


# -- QuoteResponse ------------------------------------------------------------------------------------------------

PCR_HEX = "ab" * 32
QUOTE = QuoteResponse(
    attest=b"\xffTCG\x80\x18attest",
    signature=b"\x00\x18\x00\x0bsig",
    pcr_values={i: bytes([i]) * 32 for i in range(8)},
    event_log=b"\x00\x00\x00\x00log",
)


def quote_json(**changes: Any) -> dict[str, Any]:
    return {**via_json(QUOTE.to_json()), **changes}


def test_quote_round_trip() -> None:
    assert QuoteResponse.from_json(via_json(QUOTE.to_json())) == QUOTE


def test_quote_json_shape() -> None:
    data = QUOTE.to_json()
    assert list(data["pcr_values"]) == [str(i) for i in range(8)]
    assert data["pcr_values"]["7"] == "07" * 32


def test_quote_with_every_pcr_and_upper_case_hex() -> None:
    values = {str(i): PCR_HEX.upper() for i in range(MAX_PCRS)}
    decoded = QuoteResponse.from_json(quote_json(pcr_values=values))
    assert decoded.pcr_values == {i: b"\xab" * 32 for i in range(MAX_PCRS)}


def test_quote_event_log_is_optional() -> None:
    data = quote_json()
    del data["event_log"]
    assert QuoteResponse.from_json(data).event_log == b""
    assert QuoteResponse.from_json(quote_json(event_log="")).event_log == b""


@pytest.mark.parametrize("data", [None, [], "quote", 3])
def test_quote_must_be_an_object(data: Any) -> None:
    refused(QuoteResponse.from_json, data, "quote: expected an object")


@pytest.mark.parametrize("value", [None, [], "0=ab", 1])
def test_quote_pcr_values_must_be_an_object(value: Any) -> None:
    refused(QuoteResponse.from_json, quote_json(pcr_values=value), "quote.pcr_values: expected an object")


def test_quote_pcr_values_missing_is_refused() -> None:
    data = quote_json()
    del data["pcr_values"]
    refused(QuoteResponse.from_json, data, "quote.pcr_values: expected an object")


def test_quote_too_many_pcrs_is_refused() -> None:
    values = {str(i): PCR_HEX for i in range(MAX_PCRS)} | {"x": PCR_HEX}
    refused(QuoteResponse.from_json, quote_json(pcr_values=values), f"quote.pcr_values: more than {MAX_PCRS} PCRs")


@pytest.mark.parametrize("index", ["24", "99", "-1", "x", "", " 1", "1 ", "0x1", "1.0", "²", "٣", "01", "+1"])
def test_quote_bad_pcr_index_is_refused(index: str) -> None:
    refused(
        QuoteResponse.from_json, quote_json(pcr_values={index: PCR_HEX}), f"quote.pcr_values: bad PCR index {index!r}"
    )


def test_quote_non_text_pcr_index_is_refused() -> None:
    refused(QuoteResponse.from_json, quote_json(pcr_values={1: PCR_HEX}), "quote.pcr_values: bad PCR index 1")


@pytest.mark.parametrize(
    "value",
    [
        None,
        1,
        b"\xab" * 32,
        "ab" * 31,
        "ab" * 33,
        "ab" * 32 + " ",
        "zz" * 32,
        "ab" * 31 + "  ",  # 64 characters that bytes.fromhex reads as 31 bytes
        " " + "ab" * 31 + " ",
        "é" * 64,
        "",
    ],
    ids=["none", "int", "bytes", "short", "long", "space", "non-hex", "spaced", "padded", "non-ascii", "empty"],
)
def test_quote_bad_pcr_value_is_refused(value: Any) -> None:
    refused(QuoteResponse.from_json, quote_json(pcr_values={"5": value}), "quote.pcr_values.5: expected 64 hex digits")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attest": None}, "quote.attest: expected base64 text"),
        ({"attest": ""}, "quote.attest: must not be empty"),
        ({"attest": "A" * (MAX_BLOB_B64 + 4)}, f"quote.attest: larger than {MAX_BLOB_B64} characters"),
        ({"attest": "%%%%"}, "quote.attest: not valid base64"),
        ({"signature": 1}, "quote.signature: expected base64 text"),
        ({"signature": ""}, "quote.signature: must not be empty"),
        ({"signature": "A" * (MAX_BLOB_B64 + 4)}, f"quote.signature: larger than {MAX_BLOB_B64} characters"),
        ({"signature": "YWJjZA"}, "quote.signature: not valid base64"),
        ({"event_log": None}, "quote.event_log: expected base64 text"),
        ({"event_log": "A" * (MAX_EVENT_LOG_B64 + 4)}, f"quote.event_log: larger than {MAX_EVENT_LOG_B64} characters"),
        ({"event_log": "é"}, "quote.event_log: not valid base64"),
    ],
)
def test_quote_field_errors(changes: dict[str, Any], message: str) -> None:
    refused(QuoteResponse.from_json, quote_json(**changes), message)


@pytest.mark.parametrize("name", ["attest", "signature"])
def test_quote_missing_blob_is_refused(name: str) -> None:
    data = quote_json()
    del data[name]
    refused(QuoteResponse.from_json, data, f"quote.{name}: expected base64 text")


def test_quote_field_prefix_is_the_callers() -> None:
    refused(
        lambda d: QuoteResponse.from_json(d, "quotes[2]"), quote_json(attest=""), "quotes[2].attest: must not be empty"
    )


# -- Challenge ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "challenge",
    [
        Challenge(CEREMONY_ID, nonce=bytes(range(20)), credential_blob=b"\x00\x44blob", encrypted_secret=b"\x01\x02"),
        Challenge(CEREMONY_ID, challenge=bytes(range(32))),
        Challenge("c"),
        Challenge("x" * MAX_ID_CHARS, nonce=b"n", challenge=b"c", credential_blob=b"b", encrypted_secret=b"e"),
    ],
    ids=["tpm-enroll", "key", "empty", "everything"],
)
def test_challenge_round_trip(challenge: Challenge) -> None:
    assert Challenge.from_json(via_json(challenge.to_json())) == challenge


def test_challenge_absent_bytes_are_empty() -> None:
    assert Challenge.from_json({"ceremony_id": CEREMONY_ID}) == Challenge(CEREMONY_ID)


@pytest.mark.parametrize("data", [None, [], "challenge"])
def test_challenge_must_be_an_object(data: Any) -> None:
    refused(Challenge.from_json, data, "challenge: expected an object")


@pytest.mark.parametrize("ceremony_id", [None, "", 5, "x" * (MAX_CEREMONY_ID_CHARS + 1), ["id"]])
def test_challenge_bad_ceremony_id(ceremony_id: Any) -> None:
    refused(
        Challenge.from_json,
        {"ceremony_id": ceremony_id},
        f"ceremony_id: expected a non-empty string of at most {MAX_CEREMONY_ID_CHARS} characters",
    )


@pytest.mark.parametrize("name", ["nonce", "challenge", "credential_blob", "encrypted_secret"])
def test_challenge_byte_field_errors(name: str) -> None:
    refused(Challenge.from_json, {"ceremony_id": "c", name: 1}, f"{name}: expected base64 text")
    refused(Challenge.from_json, {"ceremony_id": "c", name: "%%%%"}, f"{name}: not valid base64")
    refused(
        Challenge.from_json,
        {"ceremony_id": "c", name: "A" * (MAX_BLOB_B64 + 4)},
        f"{name}: larger than {MAX_BLOB_B64} characters",
    )


# -- ChallengeResponse --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        ChallengeResponse(CEREMONY_ID, activated_secret=bytes(range(32)), quote=QUOTE),
        ChallengeResponse(CEREMONY_ID, quote=QUOTE),
        ChallengeResponse(CEREMONY_ID, signature=b"\x30\x45" + bytes(69)),
        ChallengeResponse(CEREMONY_ID),
    ],
    ids=["tpm-enroll", "tpm-auth", "key", "empty"],
)
def test_challenge_response_round_trip(response: ChallengeResponse) -> None:
    assert ChallengeResponse.from_json(via_json(response.to_json())) == response


def test_challenge_response_json_shape() -> None:
    data = ChallengeResponse(CEREMONY_ID, signature=b"sig").to_json()
    assert data == {"ceremony_id": CEREMONY_ID, "activated_secret": "", "quote": None, "signature": b64(b"sig")}


@pytest.mark.parametrize("data", [None, [], "response", 0])
def test_challenge_response_must_be_an_object(data: Any) -> None:
    refused(ChallengeResponse.from_json, data, "response: expected an object")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"ceremony_id": None},
            f"ceremony_id: expected a non-empty string of at most {MAX_CEREMONY_ID_CHARS} characters",
        ),
        (
            {"ceremony_id": ""},
            f"ceremony_id: expected a non-empty string of at most {MAX_CEREMONY_ID_CHARS} characters",
        ),
        (
            {"ceremony_id": "i" * (MAX_CEREMONY_ID_CHARS + 1)},
            f"ceremony_id: expected a non-empty string of at most {MAX_CEREMONY_ID_CHARS} characters",
        ),
        ({"activated_secret": 1}, "activated_secret: expected base64 text"),
        ({"activated_secret": "%%%%"}, "activated_secret: not valid base64"),
        ({"activated_secret": "A" * (MAX_BLOB_B64 + 4)}, f"activated_secret: larger than {MAX_BLOB_B64} characters"),
        ({"signature": None}, "signature: expected base64 text"),
        ({"signature": "YWJjZA"}, "signature: not valid base64"),
        ({"signature": "A" * (MAX_BLOB_B64 + 4)}, f"signature: larger than {MAX_BLOB_B64} characters"),
        ({"quote": "quote"}, "quote: expected an object"),
        ({"quote": []}, "quote: expected an object"),
        ({"quote": {}}, "quote.pcr_values: expected an object"),
        ({"quote": quote_json(attest="%%%%")}, "quote.attest: not valid base64"),
        ({"quote": quote_json(pcr_values={"0": "00"})}, "quote.pcr_values.0: expected 64 hex digits"),
    ],
)
def test_challenge_response_field_errors(changes: dict[str, Any], message: str) -> None:
    refused(ChallengeResponse.from_json, {"ceremony_id": CEREMONY_ID, **changes}, message)


def test_challenge_response_missing_ceremony_id_is_refused() -> None:
    refused(
        ChallengeResponse.from_json,
        {"signature": b64(b"sig")},
        f"ceremony_id: expected a non-empty string of at most {MAX_CEREMONY_ID_CHARS} characters",
    )


# -- CollectedData ------------------------------------------------------------------------------------------------

COLLECTED = {
    "collect_time": "2026-06-01T12:00:00+00:00",
    "os_type": "macos",
    "serial_number": "C02XJ0ABHX87",
    "model_identifier": "MacBookPro18,3",
    "os_id": "",
    "os_version": "14.2",
    "os_build": "23C64",
    "os_username": "alice",
    "system_serial_number": "",
    "base_board_serial_number": "",
    "reported_asset_tag": "",
}


def test_collected_data_round_trip() -> None:
    data = CollectedData.from_dict(COLLECTED)
    assert data.to_dict() == COLLECTED
    assert CollectedData.from_dict(via_json(data.to_dict())) == data


def test_collected_data_optional_fields_default_to_empty() -> None:
    data = CollectedData.from_dict({"collect_time": "t", "os_type": "linux", "serial_number": "s"})
    assert data == CollectedData("t", "linux", "s")
    assert data.model_identifier == data.os_version == ""


def test_collected_data_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match=exactly("collected_data: unknown field 'os_arch'")):
        CollectedData.from_dict({**COLLECTED, "os_arch": "arm64", "zz": "1"})


@pytest.mark.parametrize("name", ["model_identifier", "os_version", "serial_number", "collect_time"])
def test_collected_data_over_long_value_is_refused(name: str) -> None:
    CollectedData.from_dict({**COLLECTED, name: "x" * MAX_COLLECTED_FIELD_CHARS})
    with pytest.raises(
        ValidationError,
        match=exactly(f"collected_data.{name}: expected a string of at most {MAX_COLLECTED_FIELD_CHARS} chars"),
    ):
        CollectedData.from_dict({**COLLECTED, name: "x" * (MAX_COLLECTED_FIELD_CHARS + 1)})


@pytest.mark.parametrize("value", [None, 14, ["14.2"], {"v": "14.2"}, True])
def test_collected_data_non_string_value_is_refused(value: Any) -> None:
    with pytest.raises(ValidationError, match=re.escape("collected_data.os_version: expected a string")):
        CollectedData.from_dict({**COLLECTED, "os_version": value})


@pytest.mark.parametrize("name", ["collect_time", "os_type", "serial_number"])
def test_collected_data_missing_required_field_is_refused(name: str) -> None:
    missing = {k: v for k, v in COLLECTED.items() if k != name}
    with pytest.raises(ValidationError, match=exactly(f"collected_data.{name} is required")):
        CollectedData.from_dict(missing)
    with pytest.raises(ValidationError, match=exactly(f"collected_data.{name} is required")):
        CollectedData.from_dict({**COLLECTED, name: ""})
