"""tsh: the user's command line — log in, see who you are, log out."""

from __future__ import annotations

import getpass
import importlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import click
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust import __version__
from devicetrust.ceremony.messages import Challenge, CollectedData
from devicetrust.cli.common import (
    DevicetrustGroup,
    emit,
    fail,
    format_duration,
    format_option,
    parse_duration,
    warn,
)
from devicetrust.cli.device_proof import chosen_backend, device_state_dir, prove_for_session, wants_session_proof
from devicetrust.cli.profile import Profile, ProfileStore
from devicetrust.client import AuthApi
from devicetrust.crypto.ca import load_certificate_pem
from devicetrust.crypto.certs import identity_from_ssh_cert, ssh_cert_extension_names
from devicetrust.crypto.keys import generate_private_key, private_key_to_pem, public_key_to_openssh
from devicetrust.device.collect import collect
from devicetrust.device.device_key import DeviceKey
from devicetrust.device.keys import BACKENDS, UnsafeSoftwareKey, open_device_key
from devicetrust.errors import AlreadyExistsError, DevicetrustError, TrustError, ValidationError
from devicetrust.files import write_atomic
from devicetrust.protocol import LoginResponse, ResourceDocument
from devicetrust.types import SESSION_PROOF_PER_SESSION, os_display_name

PASSWORD_PROMPT = "Enter password for user {user}: "


device_key_option = click.option(
    "--device-key",
    type=click.Choice(BACKENDS),
    help="Device key backend (default: TPM on Linux/Windows, Secure Enclave on macOS).",
)


def _read_secret(prompt: str, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ValidationError("--password-stdin: no password on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValidationError("no terminal to ask for a password; use --password-stdin")
    return getpass.getpass(prompt)


def _trusted_ca(store: ProfileStore, proxy: str, *, insecure: bool, trust_new_ca: bool) -> str | None:
    """The host CA to verify ``proxy`` with: pinned, or fetched and pinned on first use."""
    pinned = store.pinned_ca(proxy)
    if pinned and not trust_new_ca:
        return pinned
    if insecure:
        warn("--insecure: the auth service's certificate is not verified; use only in development")
        return None
    with AuthApi(proxy, insecure=True) as probe:
        fetched = probe.cas().host_ca_pem
    # Prove the server we will talk to holds a certificate from this CA before pinning it.
    with AuthApi(proxy, ca_pem=fetched) as check:
        check.ping()
    fingerprint = ca_fingerprint(fetched)
    if pinned and pinned != fetched:
        click.echo(f"Trusting the NEW cluster CA of {proxy} ({fingerprint}).", err=True)
    elif not pinned:
        click.echo(f"Trusting the cluster CA of {proxy} on first use ({fingerprint}).", err=True)
    store.pin_ca(proxy, fetched)
    return fetched


def ca_fingerprint(ca_pem: str) -> str:
    """SHA-256 of the CA certificate's DER, as `openssl x509 -fingerprint -sha256` prints it."""
    digest = load_certificate_pem(ca_pem.encode()).fingerprint(hashes.SHA256())
    return "SHA256:" + ":".join(f"{b:02X}" for b in digest)


def _client_for(store: ProfileStore, proxy: str, insecure: bool, token: str | None = None) -> AuthApi:
    pinned = store.pinned_ca(proxy)
    if pinned is None and not insecure:
        raise TrustError(f"no pinned CA for {proxy}; run 'tsh login --proxy={proxy}'")
    return AuthApi(proxy, ca_pem=pinned, insecure=insecure and pinned is None, token=token)


def _save_login(
    store: ProfileStore, proxy: str, kind: str, reply: LoginResponse, key: ec.EllipticCurvePrivateKey
) -> Profile:
    profile = Profile(
        proxy=proxy,
        user=reply.identity.user,
        cluster_name=reply.cluster_name,
        kind=kind,
        user_ca_ssh=reply.user_ca_ssh,
        user_ca_pem=reply.user_ca_pem,
        host_ca_ssh=reply.host_ca_ssh,
        device_trust=reply.device_trust.enabled,
        session_proof=reply.device_trust.session_proof or SESSION_PROOF_PER_SESSION,
    )
    store.save(
        profile,
        private_key_pem=private_key_to_pem(key),
        public_key_openssh=public_key_to_openssh(key.public_key()),
        ssh_cert=reply.ssh_cert,
        tls_cert_pem=reply.tls_cert,
        session_token=reply.session_token,
    )
    return profile


class _StatusDevice(TypedDict):
    device_id: str
    asset_tag: str
    credential_id: str


class _Status(TypedDict):
    """``tsh status``'s document (--format json/yaml), in its key order."""

    profile_url: str
    user: str
    cluster: str
    roles: list[str]
    logins: list[str]
    bot_name: str | None
    valid_until: str
    expired: bool
    extensions: list[str]
    device: _StatusDevice | None


def _status_data(store: ProfileStore, profile: Profile) -> _Status:
    cert = store.ssh_cert_path(profile).read_bytes()
    identity = identity_from_ssh_cert(cert)
    now = datetime.now(UTC)
    return {
        "profile_url": profile.url,
        "user": identity.username,
        "cluster": profile.cluster_name,
        "roles": list(identity.roles),
        "logins": list(identity.logins),
        "bot_name": identity.bot_name,
        "valid_until": identity.not_after.isoformat(),
        "expired": identity.not_after <= now,
        "extensions": sorted(ssh_cert_extension_names(cert)),
        "device": None
        if identity.device is None
        else {
            "device_id": identity.device.device_id,
            "asset_tag": identity.device.asset_tag,
            "credential_id": identity.device.credential_id,
        },
    }


def _print_status(data: _Status) -> None:
    until = datetime.fromisoformat(data["valid_until"])
    remaining = until - datetime.now(UTC)
    validity = "EXPIRED" if data["expired"] else f"valid for {format_duration(remaining)}"
    rows = [
        ("Profile URL", data["profile_url"]),
        ("Logged in as", data["user"] + (f" (bot {data['bot_name']})" if data["bot_name"] else "")),
        ("Cluster", data["cluster"]),
        ("Roles", ", ".join(data["roles"])),
        ("Logins", ", ".join(data["logins"]) or "-"),
        ("Valid until", f"{until.strftime('%Y-%m-%d %H:%M:%S %z')} [{validity}]"),
        ("Extensions", ", ".join(data["extensions"])),
    ]
    if data["device"]:
        rows.append(("Device", f"{data['device']['asset_tag']} ({data['device']['device_id']})"))
    click.echo(f"> {rows[0][0] + ':':<16}{rows[0][1]}")
    for name, value in rows[1:]:
        click.echo(f"  {name + ':':<16}{value}")


#: Commands defined in modules of their own, imported when used: ``tsh device session-cert`` (which OpenSSH runs
#: before each connection) and ``tsh kube credentials`` (which kubectl runs) start without the SSH client or the
#: database relay, and ``tsh ssh`` without the other two.
LAZY_COMMANDS = {
    "ssh": "devicetrust.cli.tsh_ssh",
    "ls": "devicetrust.cli.tsh_ssh",
    "config": "devicetrust.cli.tsh_ssh",
    "db": "devicetrust.cli.tsh_db",
    "proxy": "devicetrust.cli.tsh_db",
    "kube": "devicetrust.cli.tsh_kube",
}


class TshGroup(DevicetrustGroup):
    """The tsh command group, with :data:`LAZY_COMMANDS` loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = LAZY_COMMANDS.get(cmd_name)
        if module_name is None or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        commands: tuple[click.Command, ...] = importlib.import_module(module_name).COMMANDS
        for command in commands:
            self.add_command(command)
        return self.commands.get(cmd_name)


@click.group(cls=TshGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tsh")
def cli() -> None:
    """tsh: log in to a devicetrust cluster and use its resources from a trusted device."""


def _cert_ttl_seconds(text: str | None) -> int | None:
    """Checked here too, so the error names the flag."""
    if not text:
        return None
    from devicetrust.auth.sessions import MIN_CERT_TTL  # only when the flag is given: a heavy import

    ttl = parse_duration(text, what="--ttl")
    if ttl < MIN_CERT_TTL:
        raise ValidationError(f"--ttl must be at least {int(MIN_CERT_TTL.total_seconds() // 60)} minute")
    return int(ttl.total_seconds())


@cli.command()
@click.option("--proxy", help="Auth service address HOST:PORT (default: the current profile's).")
@click.option("--user", help="User name (default: the current profile's, else your local user name).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--token", help="A signup token from 'tctl users add': set your password, then log in.")
@click.option("--bot", is_flag=True, help="Log in as a bot with the join token from 'tctl bots add'.")
@click.option("--ttl", help="Certificate lifetime, e.g. 8h (default 12h, capped by your roles).")
@click.option("--insecure", is_flag=True, help="Do not verify the auth service's certificate (development only).")
@click.option("--trust-new-ca", is_flag=True, help="Replace the pinned cluster CA (after a cluster re-creation).")
@device_key_option
@format_option()
def login(
    proxy: str | None,
    user: str | None,
    password_stdin: bool,
    token: str | None,
    bot: bool,
    ttl: str | None,
    insecure: bool,
    trust_new_ca: bool,
    device_key: str | None,
    fmt: str,
) -> None:
    """Log in and store certificates under ~/.tsh (or $TSH_HOME).

    When the cluster or one of your roles uses device trust, the enrolled device then authenticates and the
    certificates are re-issued with its teleport-device-* extensions (auto-enrolling it first when the cluster
    allows that)."""
    store = ProfileStore()
    current = store.current()
    proxy = proxy or (current.proxy if current else None)
    if not proxy:
        fail("--proxy is required for the first login")
    ttl_seconds = _cert_ttl_seconds(ttl)
    ca_pem = _trusted_ca(store, proxy, insecure=insecure, trust_new_ca=trust_new_ca)
    key = generate_private_key()
    public_key = public_key_to_openssh(key.public_key())
    with AuthApi(proxy, ca_pem=ca_pem, insecure=ca_pem is None) as client:
        if bot:
            if not token:
                fail("--bot needs --token (from 'tctl bots add')")
            reply = client.bot_join(token, public_key, ttl_seconds)
            kind = "bot"
        else:
            if token:
                user = _signup(client, token, password_stdin)
            user = user or (current.user if current and current.proxy == proxy else None) or getpass.getuser()
            password = _read_secret(PASSWORD_PROMPT.format(user=user), password_stdin)
            reply = client.login(user, password, public_key, ttl_seconds)
            kind = "user"
    profile = _save_login(store, proxy, kind, reply, key)
    if reply.device_trust.enabled:
        _device_login_step(store, profile, device_key, auto_enroll=reply.device_trust.auto_enroll)
    emit(_status_data(store, profile), fmt, _print_status)


def _signup(client: AuthApi, token: str, password_stdin: bool) -> str:
    password = _read_secret("Choose a password: ", password_stdin)
    if not password_stdin and _read_secret("Confirm password: ", False) != password:
        raise ValidationError("passwords do not match")
    user = client.signup(token, password).user
    click.echo(f'Password set for user "{user}".', err=True)
    if password_stdin:
        # The same line logs in right after signup.
        sys.stdin = _Replay(password)
    return user


class _Replay:
    """Stands in for stdin so a scripted signup can log in with the password it just set."""

    def __init__(self, line: str) -> None:
        self._line = line + "\n"

    def readline(self) -> str:
        line, self._line = self._line, ""
        return line

    def isatty(self) -> bool:
        return False


@cli.command()
@click.option("--proxy", required=True, help="Auth service address HOST:PORT.")
@click.option("--token", required=True, help="The signup token from 'tctl users add'.")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@click.option("--insecure", is_flag=True, help="Do not verify the auth service's certificate (development only).")
def signup(proxy: str, token: str, password_stdin: bool, insecure: bool) -> None:
    """Set your password with a signup token."""
    store = ProfileStore()
    ca_pem = _trusted_ca(store, proxy, insecure=insecure, trust_new_ca=False)
    with AuthApi(proxy, ca_pem=ca_pem, insecure=ca_pem is None) as client:
        user = _signup(client, token, password_stdin)
    click.echo(f"Run 'tsh login --proxy={proxy} --user={user}' to log in.")


@cli.command()
@format_option()
def status(fmt: str) -> None:
    """Show the current identity: user, roles, logins, validity and certificate extensions."""
    store = ProfileStore()
    profile = store.require_current()
    if not store.ssh_cert_path(profile).exists():
        fail("not logged in; run 'tsh login'")
    emit(_status_data(store, profile), fmt, _print_status)


@cli.command()
def logout() -> None:
    """Remove the current profile's keys and certificates and end its session."""
    store = ProfileStore()
    profile = store.current()
    if profile is None:
        click.echo("Not logged in.")
        return
    try:
        with _client_for(store, profile.proxy, False, store.session_token(profile)) as client:
            client.logout()
    except Exception as err:
        warn(f"could not end the session on the server: {err}")
    store.remove(profile)
    from devicetrust.cli import tsh_kube  # imported here, as LAZY_COMMANDS are

    kubeconfig = tsh_kube.kubeconfig_path()
    try:
        removed = tsh_kube.remove_kubeconfig_entries(kubeconfig, profile)
    except DevicetrustError as err:
        warn(f"could not remove the Kubernetes contexts: {err}")
    else:
        if removed:
            click.echo(f"Removed the Kubernetes contexts {', '.join(removed)} from {kubeconfig}.")
    click.echo(f"Logged out {profile.user} from {profile.proxy}.")


# ------------------------------------------------------------------------------------------------ device
def _device_state(store: ProfileStore) -> Path:
    return device_state_dir(store)


def _session_client(store: ProfileStore, profile: Profile) -> AuthApi:
    return _client_for(store, profile.proxy, False, store.session_token(profile))


def _enroll(client: AuthApi, key: DeviceKey, collected: CollectedData, token: str | None) -> ResourceDocument:
    begin = client.enroll_begin(
        token=token,
        credential_id=key.credential_id(),
        device_data=collected.to_dict(),
        **key.enroll_payload(),
    )
    answer = key.answer_enrollment(Challenge.from_json(begin.model_dump()))
    return client.enroll_finish(answer.to_json())


def _enrolled_message(device: ResourceDocument) -> str:
    spec = device["spec"]
    return f'Device "{spec["asset_tag"]}"/{os_display_name(spec["os_type"])} enrolled'


def _authenticate_device(store: ProfileStore, profile: Profile, key: DeviceKey, collected: CollectedData) -> None:
    """Run the authentication ceremony and replace the profile's certificates with the augmented pair."""
    cert_path = store.ssh_cert_path(profile)
    with _session_client(store, profile) as client:
        begin = client.authenticate_begin(
            credential_id=key.credential_id(), device_data=collected.to_dict(), ssh_cert=cert_path.read_text()
        )
        answer = key.answer_authentication(Challenge.from_json(begin.model_dump()))
        reply = client.authenticate_finish(answer.to_json())
    write_atomic(cert_path, reply.ssh_cert.rstrip().encode() + b"\n", 0o644)
    write_atomic(store.tls_cert_path(profile), reply.tls_cert.encode(), 0o644)


def _warn_unsafe(key: DeviceKey) -> None:
    if isinstance(key, UnsafeSoftwareKey):
        warn(
            "USING AN UNSAFE SOFTWARE DEVICE KEY: it lives in a file under $TSH_HOME and proves nothing about "
            "the hardware. For development and benchmarks only."
        )


def _device_login_step(store: ProfileStore, profile: Profile, backend: str | None, *, auto_enroll: bool) -> None:
    """After login: authenticate the enrolled device, auto-enrolling it first when the cluster allows it.
    Failures leave the plain certificates in place and say why; enforcement decides what they may reach."""
    state = _device_state(store)
    backend = chosen_backend(backend)
    enrolled_before = (state / f"{backend}.credential-id").exists()
    if not enrolled_before and not auto_enroll:
        return
    try:
        collected = collect()
        with open_device_key(backend, state) as key:
            _warn_unsafe(key)
            if not enrolled_before:
                with _session_client(store, profile) as client:
                    click.echo(_enrolled_message(_enroll(client, key, collected, None)), err=True)
            _authenticate_device(store, profile, key, collected)
    except DevicetrustError as err:
        warn(f"device authentication did not complete: {err}")


@cli.group()
def device() -> None:
    """This device: its asset tag, what it reports, enrollment and authentication."""


@device.command("asset-tag")
def device_asset_tag() -> None:
    """Print this device's serial number (its asset tag in the inventory)."""
    click.echo(collect().serial_number)


@device.command("collect")
@format_option(default="json")
def device_collect(fmt: str) -> None:
    """Show the data this device sends when it enrolls or authenticates."""
    data = collect().to_dict()
    emit(data, fmt, lambda d: click.echo("\n".join(f"{k + ':':<26}{v}" for k, v in d.items())))


@device.command("enroll")
@click.option("--token", help="The enrollment token from 'tctl devices enroll'.")
@click.option(
    "--current-device", is_flag=True, help="Register and enroll this device in one step (editors, device admins)."
)
@device_key_option
def device_enroll(token: str | None, current_device: bool, device_key: str | None) -> None:
    """Enroll this device: create its hardware key and register the public half with the cluster."""
    if bool(token) == current_device:
        raise click.UsageError("give exactly one of --token or --current-device")
    store = ProfileStore()
    profile = store.require_current()
    collected = collect()
    backend = chosen_backend(device_key)
    with _session_client(store, profile) as client, open_device_key(backend, _device_state(store)) as key:
        _warn_unsafe(key)
        if current_device:
            token = _self_enroll_token(client, collected)
        device_doc = _enroll(client, key, collected, token)
    click.echo(_enrolled_message(device_doc))


def _self_enroll_token(client: AuthApi, collected: CollectedData) -> str:
    try:
        reply = client.add_device(
            collected.os_type, collected.serial_number, create_enroll_token=True, enroll_token_ttl_seconds=None
        )
    except AlreadyExistsError:
        found = client.find_devices(collected.serial_number).items
        matching = [d for d in found if d["spec"]["os_type"] == collected.os_type]
        if not matching:
            raise
        reply = client.create_enroll_token(matching[0]["metadata"]["name"])
    return str(reply.enroll_token)


@device.command("authenticate")
@device_key_option
@format_option()
def device_authenticate(device_key: str | None, fmt: str) -> None:
    """Re-run device authentication for the current login (e.g. after enrolling) without logging in again."""
    store = ProfileStore()
    profile = store.require_current()
    backend = chosen_backend(device_key)
    with open_device_key(backend, _device_state(store)) as key:
        _warn_unsafe(key)
        _authenticate_device(store, profile, key, collect())
    emit(_status_data(store, profile), fmt, _print_status)


@device.command("session-cert")
@click.option("--ssh-node", "host_id", required=True, help="Host id of the node the session is for (see tsh ls).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the SSH session certificate to this file (default: print it).",
)
@device_key_option
def device_session_cert(host_id: str, out: Path | None, device_key: str | None) -> None:
    """Prove this device for one SSH session and print (or write) its session certificate.

    The certificate admits one connection to that node for a short while (the cluster's session_proof_ttl).
    'tsh ssh' does this by itself; the OpenSSH configuration from 'tsh config' runs this command."""
    store = ProfileStore()
    profile = store.require_current()
    if not wants_session_proof(profile):
        raise ValidationError("this cluster does not use session proofs (device trust off or session_proof: login)")
    certificate = prove_for_session(store, profile, "ssh", host_id, backend=device_key)
    if out is None:
        click.echo(certificate.ssh_cert.decode().rstrip())
    else:
        write_atomic(out, certificate.ssh_cert, 0o644)


def main() -> None:
    cli(prog_name="tsh")


if __name__ == "__main__":
    main()
