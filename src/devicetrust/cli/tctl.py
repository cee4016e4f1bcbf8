"""tctl: the administrator's command line.

On the auth host it acts as the local admin using the identity the daemon writes into its data dir
(``--config FILE`` or ``$DEVICETRUST_CONFIG`` names the daemon's config); elsewhere it uses the caller's tsh
profile and is limited by that user's roles.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from devicetrust import __version__
from devicetrust.cli.common import (
    DevicetrustGroup,
    emit,
    format_option,
    parse_duration,
    print_table,
    split_list,
)
from devicetrust.cli.profile import ProfileStore
from devicetrust.client import AuthApi
from devicetrust.config import AdminIdentity, load_config
from devicetrust.errors import AlreadyExistsError, ConfigError, DevicetrustError, NotFoundError, ValidationError
from devicetrust.protocol import ClusterCAs, DeviceListQuery, DeviceWithToken, ResourceDocument
from devicetrust.types import (
    ENROLL_STATUSES,
    OS_TYPES,
    Metadata,
    dump_yaml,
    load_yaml_documents,
    normalize_kind,
    os_display_name,
    parse_resource,
)


class Context:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._client: AuthApi | None = None
        self.auth_addr = ""

    @property
    def client(self) -> AuthApi:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> AuthApi:
        config = load_config(self.config_path)
        explicit = config.source is not None
        path = config.admin_identity_path
        if path.exists() or explicit:
            try:
                identity = AdminIdentity.from_json(path.read_text())
            except FileNotFoundError:
                raise ConfigError(
                    f"no admin identity at {path}: is 'devicetrust start' running with this config?"
                ) from None
            except PermissionError:
                raise ConfigError(
                    f"cannot read the admin identity {path}: run tctl as the user that runs devicetrust"
                ) from None
            self.auth_addr = identity.auth_addr
            return AuthApi(identity.auth_addr, ca_pem=identity.host_ca_pem, token=identity.token)
        store = ProfileStore()
        profile = store.require_current()
        self.auth_addr = profile.proxy
        pinned = store.pinned_ca(profile.proxy)
        return AuthApi(profile.proxy, ca_pem=pinned, token=store.session_token(profile))


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=DevicetrustGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="The daemon's devicetrust.yaml: act as this cluster's local admin (env: DEVICETRUST_CONFIG).",
)
@click.version_option(__version__, prog_name="tctl")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """tctl: administer a devicetrust cluster — users, roles, bots, tokens, settings and audit."""
    ctx.obj = Context(config_path)
    ctx.call_on_close(lambda: ctx.obj._client.close() if ctx.obj._client else None)


# ------------------------------------------------------------------------------------------------ users
@cli.group()
def users() -> None:
    """Manage users."""


def _traits(
    logins: str | None, kube_groups: str | None, db_users: str | None, db_names: str | None = None
) -> dict[str, list[str]]:
    traits: dict[str, list[str]] = {}
    for name, value in (
        ("logins", logins),
        ("kubernetes_groups", kube_groups),
        ("db_users", db_users),
        ("db_names", db_names),
    ):
        if value is not None:
            traits[name] = split_list(value)
    return traits


def _print_invite(ctx: Context, user: str, token: str, verb: str) -> None:
    click.echo(
        f'User "{user}" has been {verb} but requires a password. Share this command with the user to complete '
        "user setup, the token is valid for 1h:\n"
        f"tsh login --proxy={ctx.auth_addr} --user={user} --token={token}\n\n"
        "NOTE: make sure the address above points at this cluster's auth service."
    )


@users.command("add")
@click.argument("name")
@click.option("--roles", required=True, help="Comma-separated roles, e.g. access,editor.")
@click.option("--logins", help="Comma-separated OS logins (the user's internal.logins trait).")
@click.option("--kubernetes-groups", help="Comma-separated Kubernetes groups.")
@click.option("--db-users", help="Comma-separated database users.")
@click.option("--db-names", help="Comma-separated database names.")
@format_option()
@pass_ctx
def users_add(
    ctx: Context,
    name: str,
    roles: str,
    logins: str | None,
    kubernetes_groups: str | None,
    db_users: str | None,
    db_names: str | None,
    fmt: str,
) -> None:
    """Create a user and print a one-time signup token."""
    traits = _traits(logins, kubernetes_groups, db_users, db_names)
    reply = ctx.client.create_user(name, _roles(roles, "--roles"), traits)
    emit(reply.model_dump(), fmt, lambda r: _print_invite(ctx, r["user"], r["invite_token"], "created"))


@users.command("update")
@click.argument("name")
@click.option("--set-roles", help="Replace the user's roles (comma-separated).")
@click.option("--set-logins", help="Replace the user's logins trait (comma-separated).")
@click.option("--set-kubernetes-groups", help="Replace the user's Kubernetes groups.")
@click.option("--set-db-users", help="Replace the user's database users.")
@click.option("--set-db-names", help="Replace the user's database names.")
@pass_ctx
def users_update(
    ctx: Context,
    name: str,
    set_roles: str | None,
    set_logins: str | None,
    set_kubernetes_groups: str | None,
    set_db_users: str | None,
    set_db_names: str | None,
) -> None:
    """Change a user's roles or traits."""
    traits = _traits(set_logins, set_kubernetes_groups, set_db_users, set_db_names)
    if set_roles is None and not traits:
        raise click.UsageError("nothing to update: give --set-roles or --set-logins")
    new_roles = _roles(set_roles, "--set-roles") if set_roles is not None else None
    reply = ctx.client.update_user(_checked_name(name), set_roles=new_roles, set_traits=traits or None)
    click.echo(f'User "{name}" has been updated (roles: {", ".join(reply.roles)}).')


@users.command("ls")
@format_option()
@pass_ctx
def users_ls(ctx: Context, fmt: str) -> None:
    """List users."""
    items = ctx.client.list_resources("user").items
    emit(
        items,
        fmt,
        lambda docs: print_table(
            ["User", "Roles", "Logins"],
            [
                (
                    d["metadata"]["name"],
                    ", ".join(d["spec"].get("roles", [])),
                    ", ".join(d["spec"].get("traits", {}).get("logins", [])),
                )
                for d in docs
            ],
        ),
    )


@users.command("rm")
@click.argument("name")
@pass_ctx
def users_rm(ctx: Context, name: str) -> None:
    """Delete a user and end their sessions."""
    ctx.client.delete_resource("user", _checked_name(name))
    click.echo(f'User "{name}" has been deleted.')


@users.command("reset")
@click.argument("name")
@pass_ctx
def users_reset(ctx: Context, name: str) -> None:
    """Clear a user's password and print a new signup token."""
    reply = ctx.client.reset_user(_checked_name(name))
    _print_invite(ctx, name, reply.invite_token, "reset")


# -------------------------------------------------------------------------------------------- resources
def _read_source(path: str) -> tuple[bytes, str]:
    """The file's bytes: the YAML loader decodes them, so a file that is not UTF-8 is a one-line error."""
    if path == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        return Path(path).read_bytes(), path
    except OSError as err:
        raise ValidationError(f"cannot read {path}: {err.strerror}") from None


@cli.command()
@click.option("-f", "--filename", required=True, help="YAML file with one or more resources ('-' for stdin).")
@click.option("--force", is_flag=True, help="Overwrite resources that already exist.")
@pass_ctx
def create(ctx: Context, filename: str, force: bool) -> None:
    """Create resources from a YAML file (roles, users, bots, cluster_auth_preference)."""
    data, source = _read_source(filename)
    documents = load_yaml_documents(data, source)
    if not documents:
        raise ValidationError(f"{source}: no resources found")
    labels = _check_documents(documents, source)
    applied: list[str] = []
    for number, (doc, label) in enumerate(zip(documents, labels, strict=True), start=1):
        try:
            reply = ctx.client.put_resource(doc, force=force)
        except DevicetrustError as err:
            if isinstance(err, AlreadyExistsError) and doc.get("kind") in _FORCE_OVERWRITES:
                err.message += "; use --force to overwrite it"
            done = f"applied before it: {', '.join(applied)}" if applied else "nothing was applied"
            err.message = f"{source}: document {number} ({label}): {err.message} ({done}; nothing after it)"
            raise
        if reply.outcome == "unchanged":
            click.echo(f'{reply.kind} "{reply.name}" already exists with this content; nothing to change')
        else:
            click.echo(f'{reply.kind} "{reply.name}" has been {reply.outcome}')
        applied.append(f"{label} {reply.outcome}")


#: kinds `tctl create --force` overwrites (a lock is never overwritten; the auth preference always is)
_FORCE_OVERWRITES = frozenset({"role", "user", "bot", "device"})


def _check_documents(documents: Sequence[Mapping[str, object]], source: str) -> list[str]:
    """Validate every document before any is sent, so a bad one late in a file leaves the cluster untouched.
    Returns each document's label ('role "access"')."""
    labels: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for number, doc in enumerate(documents, start=1):
        try:
            resource = parse_resource(doc)
        except ValidationError as err:
            raise ValidationError(f"{source}: document {number}: {err.message} (nothing was applied)") from None
        key = (resource.kind, resource.metadata.name)
        label = f'{key[0]} "{key[1]}"'
        if key in seen:
            raise ValidationError(
                f"{source}: document {number}: {label} is also document {seen[key]} (nothing was applied)"
            )
        seen[key] = number
        labels.append(label)
    return labels


def _split_ref(ref: str) -> tuple[str, str | None]:
    kind, _, name = ref.partition("/")
    return normalize_kind(kind), _checked_name(name) if name else None


def _checked_name(name: str) -> str:
    """A resource name as every resource's metadata.name must be: a clear error instead of a failed lookup."""
    return Metadata(name=name).name


def _fetch(ctx: Context, ref: str) -> list[ResourceDocument]:
    kind, name = _split_ref(ref)
    if name:
        return [ctx.client.get_resource(kind, name)]
    return ctx.client.list_resources(kind).items


@cli.command()
@click.argument("ref", metavar="KIND[/NAME]")
@format_option(default="yaml")
@pass_ctx
def get(ctx: Context, ref: str, fmt: str) -> None:
    """Print resources, e.g. 'tctl get roles', 'tctl get role/access', 'tctl get cap --format=json'."""
    docs = _fetch(ctx, ref)
    emit(
        docs,
        fmt,
        lambda items: print_table(
            ["Kind", "Name"], [(d.get("kind", ""), d.get("metadata", {}).get("name", "")) for d in items]
        ),
    )


@cli.command()
@click.argument("ref", metavar="KIND/NAME")
@pass_ctx
def rm(ctx: Context, ref: str) -> None:
    """Delete a resource, e.g. 'tctl rm role/contractor'."""
    kind, name = _split_ref(ref)
    if not name:
        raise click.UsageError("give KIND/NAME, e.g. role/contractor")
    ctx.client.delete_resource(kind, name)
    click.echo(f'{kind} "{name}" has been deleted')


@cli.command()
@click.argument("ref", metavar="KIND[/NAME]")
@pass_ctx
def edit(ctx: Context, ref: str) -> None:
    """Edit a resource in $EDITOR; it is validated and saved when the editor exits."""
    docs = _fetch(ctx, ref)
    if len(docs) != 1:
        raise click.UsageError(f"{ref} names {len(docs)} resources; give KIND/NAME")
    original = dump_yaml(docs)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="tctl-edit-") as tmp:
        path = Path(tmp) / f"{_split_ref(ref)[0]}.yaml"
        path.write_text(original)
        result = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if result.returncode != 0:
            raise ValidationError(f"editor {editor!r} exited with status {result.returncode}; nothing saved")
        edited = path.read_text()
    if edited == original:
        click.echo("edit canceled, no changes made")
        return
    documents = load_yaml_documents(edited, "edited resource")
    if len(documents) != 1:
        raise ValidationError("edited resource: expected exactly one resource")
    kind_before, kind_after = docs[0].get("kind"), documents[0].get("kind")
    if kind_after != kind_before:
        raise ValidationError(f"edited resource: kind cannot change ({kind_before!r} -> {kind_after!r}); nothing saved")
    metadata = documents[0].get("metadata")
    before, after = docs[0]["metadata"]["name"], metadata.get("name") if isinstance(metadata, dict) else None
    if after != before:
        raise ValidationError(f"edited resource: metadata.name cannot change ({before!r} -> {after!r}); nothing saved")
    reply = ctx.client.put_resource(documents[0], force=True)
    click.echo(f'{reply.kind} "{reply.name}" has been updated')


# ------------------------------------------------------------------------------------------------- bots
@cli.group()
def bots() -> None:
    """Manage bots (machine identities)."""


@bots.command("add")
@click.argument("name")
@click.option("--roles", required=True, help="Comma-separated roles.")
@click.option("--logins", help="Comma-separated OS logins for the bot.")
@click.option("--ttl", help="Lifetime of the join token (default 1h).")
@format_option()
@pass_ctx
def bots_add(ctx: Context, name: str, roles: str, logins: str | None, ttl: str | None, fmt: str) -> None:
    """Create a bot and print its one-time join token."""
    reply = ctx.client.create_bot(name, _roles(roles, "--roles"), _traits(logins, None, None), _token_ttl_seconds(ttl))
    emit(
        reply.model_dump(),
        fmt,
        lambda r: click.echo(
            f'Bot "{r["bot"]}" has been created. Its join token expires at {r["expires"]}.\n'
            f"Run on the bot's machine:\n"
            f"tsh login --proxy={ctx.auth_addr} --bot --token={r['token']}"
        ),
    )


@bots.command("ls")
@format_option()
@pass_ctx
def bots_ls(ctx: Context, fmt: str) -> None:
    """List bots."""
    items = ctx.client.list_resources("bot").items
    emit(
        items,
        fmt,
        lambda docs: print_table(
            ["Bot", "Roles"], [(d["metadata"]["name"], ", ".join(d["spec"].get("roles", []))) for d in docs]
        ),
    )


@bots.command("rm")
@click.argument("name")
@pass_ctx
def bots_rm(ctx: Context, name: str) -> None:
    """Delete a bot, its unused token and its sessions."""
    ctx.client.delete_resource("bot", _checked_name(name))
    click.echo(f'Bot "{name}" has been deleted.')


# ----------------------------------------------------------------------------------------------- tokens
@cli.group()
def tokens() -> None:
    """Manage join tokens for agents (nodes, database and Kubernetes services, MDM sync)."""


@tokens.command("add")
@click.option("--type", "token_type", required=True, help="node, db, kube or mdm.")
@click.option("--ttl", help="Token lifetime (default 30m).")
@format_option()
@pass_ctx
def tokens_add(ctx: Context, token_type: str, ttl: str | None, fmt: str) -> None:
    """Create a join token."""
    from devicetrust.auth.identities import check_join_token_type  # a heavy import, for this command only

    reply = ctx.client.create_token(check_join_token_type(token_type, "--type"), _token_ttl_seconds(ttl))
    emit(
        reply.model_dump(),
        fmt,
        lambda r: click.echo(
            f"The invite token: {r['token']}\nThis token will expire at {r['expires']}.\n"
            f"Use it as the join token of a {r['type']} agent of {ctx.auth_addr}."
        ),
    )


@tokens.command("ls")
@format_option()
@pass_ctx
def tokens_ls(ctx: Context, fmt: str) -> None:
    """List unexpired tokens (by id: tokens themselves are stored only as hashes)."""
    items = ctx.client.list_tokens().model_dump()["items"]
    emit(
        items,
        fmt,
        lambda rows: print_table(
            ["Token ID", "Type", "For", "Expires"],
            [(r["id"], r["type"], r["subject"], r["expires"]) for r in rows],
        ),
    )


@tokens.command("rm")
@click.argument("token_id")
@pass_ctx
def tokens_rm(ctx: Context, token_id: str) -> None:
    """Delete a token by the id 'tctl tokens ls' shows."""
    ctx.client.delete_token(token_id)
    click.echo(f"Token {token_id} has been deleted.")


# ---------------------------------------------------------------------------------------------- devices
@cli.group()
def devices() -> None:
    """Manage the device inventory and enrollment tokens."""


def _display_os(os_type: str) -> str:
    return os_display_name(os_type)


def device_selector(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --device-id / --asset-tag pair of every command that acts on one device."""
    command = click.option("--asset-tag", help="The device's asset tag (serial number).")(command)
    return click.option("--device-id", help="The device's id.")(command)


def _resolve_device(ctx: Context, device_id: str | None, asset_tag: str | None) -> ResourceDocument:
    if bool(device_id) == bool(asset_tag):
        raise click.UsageError("give exactly one of --device-id or --asset-tag")
    if device_id:
        return ctx.client.get_device(device_id)
    found = ctx.client.find_devices(asset_tag or "").items
    if not found:
        raise NotFoundError(f'no device with asset tag "{asset_tag}"')
    if len(found) > 1:
        raise ValidationError(f'several devices have asset tag "{asset_tag}"; use --device-id')
    return dict(found[0])


def _roles(text: str, flag: str) -> list[str]:
    roles = split_list(text)
    if not roles:
        raise ValidationError(f"at least one role is required ({flag})")
    return roles


def _token_ttl_seconds(text: str | None) -> int | None:
    """A join token's --ttl, checked here so the error names the flag."""
    if not text:
        return None
    from devicetrust.auth.identities import check_token_ttl  # only when the flag is given: a heavy import

    return int(check_token_ttl(parse_duration(text, what="--ttl"), "--ttl").total_seconds())


def _enroll_ttl_seconds(text: str | None, flag: str) -> int | None:
    """Checked here too, so the error names the flag the user typed rather than the server's."""
    if not text:
        return None
    from devicetrust.auth.devices import MAX_ENROLL_TOKEN_TTL  # only when the flag is given: a heavy import

    ttl = parse_duration(text, what=flag)
    if ttl <= timedelta(0) or ttl > MAX_ENROLL_TOKEN_TTL:
        raise ValidationError(f"{flag} must be positive and at most {MAX_ENROLL_TOKEN_TTL.days} days, got {text}")
    return int(ttl.total_seconds())


def _print_enroll_command(asset_tag: str, token: str) -> None:
    click.echo(f'Run the command below on device "{asset_tag}" to enroll it:\ntsh device enroll --token={token}')


@devices.command("add")
@click.option("--os", "os_type", required=True, help="linux, macos, windows, ios or ipados.")
@click.option("--asset-tag", required=True, help="The device's serial number (see 'tsh device asset-tag').")
@click.option("--enroll", is_flag=True, help="Also create an enrollment token.")
@click.option("--enroll-ttl", help="Lifetime of the enrollment token (default 1h).")
@format_option()
@pass_ctx
def devices_add(ctx: Context, os_type: str, asset_tag: str, enroll: bool, enroll_ttl: str | None, fmt: str) -> None:
    """Register a device in the inventory."""
    ttl = _enroll_ttl_seconds(enroll_ttl, "--enroll-ttl")
    reply = ctx.client.add_device(os_type, asset_tag, create_enroll_token=enroll, enroll_token_ttl_seconds=ttl)

    emit(reply.model_dump(), fmt, lambda _: _print_device_added(reply))


def _print_device_added(reply: DeviceWithToken) -> None:
    spec = reply.device["spec"]
    click.echo(f"Device {spec['asset_tag']}/{_display_os(spec['os_type'])} added to the inventory")
    if reply.enroll_token:
        _print_enroll_command(spec["asset_tag"], reply.enroll_token)


def _device_rows(items: Sequence[ResourceDocument]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for doc in items:
        spec = doc["spec"]
        rows.append(
            (
                spec["asset_tag"],
                _display_os(spec["os_type"]),
                (spec.get("source") or {}).get("name", ""),
                spec.get("enroll_status", "not_enrolled").replace("_", " "),
                spec.get("owner", ""),
                doc["metadata"]["name"],
            )
        )
    return rows


def _normalized_choice(allowed: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A flag taking one of ``allowed`` in any case, with ``-`` or a space for ``_``."""

    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        normalized = value.strip().lower().replace("-", "_").replace(" ", "_")
        if normalized not in allowed:
            raise click.BadParameter(f'"{value}" is not one of {", ".join(allowed)}')
        return normalized

    return check


@devices.command("ls")
@click.option(
    "--search", metavar="TEXT", help="Only devices whose asset tag, owner or device id contains TEXT (any case)."
)
@click.option(
    "--os", "os_type", metavar="OS", callback=_normalized_choice(OS_TYPES), help=f"Only this OS: {', '.join(OS_TYPES)}."
)
@click.option(
    "--enroll-status",
    metavar="STATUS",
    callback=_normalized_choice(ENROLL_STATUSES),
    help=f"Only this enroll status: {', '.join(ENROLL_STATUSES)}.",
)
@click.option(
    "--source", metavar="NAME", help='Only devices of this MDM source (e.g. jamf); "" for those registered by hand.'
)
@click.option("--owner", metavar="USER", help='Only devices this user owns; "" for those nobody owns.')
@click.option(
    "--limit", type=click.IntRange(min=1), help="Print at most this many devices, then the token of the rest."
)
@click.option("--page-token", metavar="TOKEN", help="Continue a listing after the devices an earlier --limit printed.")
@format_option()
@pass_ctx
def devices_ls(
    ctx: Context,
    search: str | None,
    os_type: str | None,
    enroll_status: str | None,
    source: str | None,
    owner: str | None,
    limit: int | None,
    page_token: str | None,
    fmt: str,
) -> None:
    """List registered devices in asset tag order, printed as the auth service streams them.

    \b
    The filters run on the auth service; all given must match:
      tctl devices ls --search=c02x    # asset tag, owner or device id contains "c02x"
      tctl devices ls --os=macos --enroll-status=not_enrolled --source=jamf
      tctl devices ls --owner=alice

    Paging: --limit=N prints at most N devices. When more match, the token that continues after them is printed:
    in text mode on stderr, as "Next page: --page-token=TOKEN"; with --format=json or yaml as next_page_token in
    {"items": [...], "next_page_token": ...} (null on the last page). Repeat the command with the same filters
    and --page-token=TOKEN for the next page. Without --limit every device is printed, and JSON is an array of
    device documents, one per line.
    """
    from devicetrust.cli import device_listing

    query = DeviceListQuery.model_construct(
        search=search, os=os_type, enroll_status=enroll_status, source=source, owner=owner, page_token=page_token
    )
    try:
        if fmt == "json":
            device_listing.print_json(ctx.client, query, limit)
        elif fmt == "yaml":
            device_listing.print_yaml(ctx.client, query, limit)
        else:
            token = device_listing.print_text(ctx.client, query, limit)
            if limit is not None and token:
                click.echo(f"Next page: --page-token={token}", err=True)
    except BrokenPipeError:
        # the reader stopped early (| head): not an error; keep Python from complaining about stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@devices.command("get")
@device_selector
@format_option(default="yaml")
@pass_ctx
def devices_get(ctx: Context, device_id: str | None, asset_tag: str | None, fmt: str) -> None:
    """Show one device."""
    device = _resolve_device(ctx, device_id, asset_tag)
    emit(
        device,
        fmt,
        lambda d: print_table(["Asset Tag", "OS", "Source", "Enroll Status", "Owner", "Device ID"], _device_rows([d])),
    )


@devices.command("rm")
@device_selector
@pass_ctx
def devices_rm(ctx: Context, device_id: str | None, asset_tag: str | None) -> None:
    """Remove a device from the inventory (issued certificates stay valid until they expire: use locks)."""
    device = _resolve_device(ctx, device_id, asset_tag)
    ctx.client.delete_device(device["metadata"]["name"])
    spec = device["spec"]
    click.echo(f"Device {spec['asset_tag']}/{_display_os(spec['os_type'])} removed")


@devices.command("enroll")
@device_selector
@click.option("--ttl", help="Lifetime of the enrollment token (default 1h).")
@format_option()
@pass_ctx
def devices_enroll(ctx: Context, device_id: str | None, asset_tag: str | None, ttl: str | None, fmt: str) -> None:
    """Create an enrollment token for a registered device (it replaces any earlier one)."""
    device = _resolve_device(ctx, device_id, asset_tag)
    seconds = _enroll_ttl_seconds(ttl, "--ttl")
    reply = ctx.client.create_enroll_token(device["metadata"]["name"], seconds)
    emit(reply.model_dump(), fmt, lambda r: _print_enroll_command(r["device"]["spec"]["asset_tag"], r["enroll_token"]))


@devices.command("unenroll")
@device_selector
@pass_ctx
def devices_unenroll(ctx: Context, device_id: str | None, asset_tag: str | None) -> None:
    """Unenroll a device: clear its credential, owner and collected data (it stays registered)."""
    device = _resolve_device(ctx, device_id, asset_tag)
    ctx.client.unenroll_device(device["metadata"]["name"])
    spec = device["spec"]
    click.echo(f"Device {spec['asset_tag']}/{_display_os(spec['os_type'])} unenrolled")


# ------------------------------------------------------------------------------------------------ locks
def _create_lock(ctx: Context, target: dict[str, str], message: str, ttl: str | None) -> str:
    spec: dict[str, str | dict[str, str]] = {"target": target, "message": message}
    if ttl:
        spec["expires"] = (datetime.now(UTC) + parse_duration(ttl, what="--ttl")).isoformat()
    name = str(uuid.uuid4())
    doc = {"kind": "lock", "version": "v2", "metadata": {"name": name}, "spec": spec}
    ctx.client.put_resource(doc, force=False)
    return name


@cli.command()
@click.option("--user", help="Lock this user.")
@click.option("--role", help="Lock every user holding this role.")
@click.option("--device", "device_id", help="Lock this device (its id).")
@click.option("--login", help="Lock this OS login.")
@click.option("--node", help="Lock this node (its host id).")
@click.option("--message", default="", help="Shown to whoever the lock stops.")
@click.option("--ttl", help="Lift the lock after this long, e.g. 24h (default: until removed).")
@pass_ctx
def lock(
    ctx: Context,
    user: str | None,
    role: str | None,
    device_id: str | None,
    login: str | None,
    node: str | None,
    message: str,
    ttl: str | None,
) -> None:
    """Lock a user, role, device, login or node: no new certificates or sessions, live sessions end."""
    targets = {
        k: v for k, v in {"user": user, "role": role, "device": device_id, "login": login, "node": node}.items() if v
    }
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --user, --role, --device, --login or --node")
    name = _create_lock(ctx, targets, message, ttl)
    click.echo(f'Created a lock with name "{name}".')


@devices.command("lock")
@device_selector
@click.option("--message", default="", help="Shown to whoever the lock stops.")
@click.option("--ttl", help="Lift the lock after this long (default: until removed).")
@pass_ctx
def devices_lock(ctx: Context, device_id: str | None, asset_tag: str | None, message: str, ttl: str | None) -> None:
    """Lock a device: it can no longer authenticate, and sessions from it are refused and ended."""
    device = _resolve_device(ctx, device_id, asset_tag)
    name = _create_lock(ctx, {"device": device["metadata"]["name"]}, message, ttl)
    click.echo(f'Created a lock with name "{name}".')


# ------------------------------------------------------------------------------------------------ audit
@cli.group()
def audit() -> None:
    """Query the audit log."""


@audit.command("ls")
@click.option("--since", help="Only events newer than this, e.g. 1h or 30m (default: all).")
@click.option("--until", "until_", help="Only events older than this much ago.")
@click.option("--type", "event_types", multiple=True, help="Only this event type (repeatable), e.g. user.login.")
@click.option("--user", help="Only events of this user.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@format_option()
@pass_ctx
def audit_ls(
    ctx: Context,
    since: str | None,
    until_: str | None,
    event_types: tuple[str, ...],
    user: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List the latest audit events (up to --limit), oldest first."""
    now = datetime.now(UTC)
    items = ctx.client.events(
        since=now - parse_duration(since, what="--since") if since else None,
        until=now - parse_duration(until_, what="--until") if until_ else None,
        types=list(event_types),
        user=user,
        limit=limit,
        newest=True,
    ).items
    emit(
        items,
        fmt,
        lambda rows: print_table(
            ["Time", "Event", "Code", "User", "OK"],
            [
                (r["time"][:19].replace("T", " "), r["event"], r["code"], r["user"], "yes" if r["success"] else "no")
                for r in rows
            ],
        ),
    )


def _ca_fingerprints(cas: ClusterCAs) -> dict[str, str]:
    """What ``ssh-keygen -l`` prints for each SSH CA key, and what ``openssl x509 -fingerprint -sha256`` prints for
    the host CA's certificate (the one the auth service's TLS certificate chains to)."""
    # imported here: cryptography's X.509 module is slow to import and only `tctl status` needs it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from devicetrust.crypto.keys import fingerprint_sha256, load_public_key

    host_cert = x509.load_pem_x509_certificate(cas.host_ca_pem.encode())
    return {
        "user_ca": fingerprint_sha256(load_public_key(cas.user_ca_ssh)),
        "host_ca": fingerprint_sha256(load_public_key(cas.host_ca_ssh)),
        "host_ca_tls": "SHA256 " + host_cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


@cli.command()
@format_option()
@pass_ctx
def status(ctx: Context, fmt: str) -> None:
    """Show the cluster name, version, device trust settings and CA fingerprints."""
    ping = ctx.client.ping()
    who = ctx.client.whoami()
    data = {**ping.model_dump(), "caller": who.model_dump(), "cas": _ca_fingerprints(ctx.client.cas())}
    emit(
        data,
        fmt,
        lambda d: click.echo(
            f"Cluster:       {d['cluster_name']}\nVersion:       {d['server_version']}\n"
            f"Device trust:  mode {d['auth']['device_trust']['mode']}, "
            f"auto_enroll {str(d['auth']['device_trust']['auto_enroll']).lower()}, "
            f"session proof {d['auth']['device_trust'].get('session_proof', 'per_session')}"
            f" ({d['auth']['device_trust'].get('session_proof_ttl', '1m')})\n"
            f"Acting as:     {d['caller']['user']} ({', '.join(d['caller']['roles'])})\n"
            f"User CA:       {d['cas']['user_ca']}\n"
            f"Host CA:       {d['cas']['host_ca']}\n"
            f"Host CA (TLS): {d['cas']['host_ca_tls']}"
        ),
    )


# ------------------------------------------------------------------------------------------------- auth
@cli.group("auth")
def auth_group() -> None:
    """The cluster's certificate authorities."""


#: --type values: the SSH CAs as OpenSSH lines, the TLS CAs as PEM certificates ("tls" is the host CA, which
#: clients trust the auth service with).
EXPORT_TYPES = ("user", "host", "tls", "tls-host", "tls-user")


@auth_group.command("export")
@click.option(
    "--type",
    "ca_type",
    type=click.Choice(EXPORT_TYPES),
    help="user: for sshd's TrustedUserCAKeys (drop the leading 'cert-authority '); host: a known_hosts line; "
    "tls, tls-host, tls-user: PEM certificates. Default: the user and host lines.",
)
@pass_ctx
def auth_export(ctx: Context, ca_type: str | None) -> None:
    """Print the public half of the cluster's CAs, never their private keys."""
    cas = ctx.client.cas()
    cluster = ctx.client.ping().cluster_name
    lines = {
        "user": f"cert-authority {_ssh_key(cas.user_ca_ssh)} clustername={cluster}&type=user",
        "host": f"@cert-authority * {_ssh_key(cas.host_ca_ssh)} clustername={cluster}&type=host",
        "tls": cas.host_ca_pem.rstrip("\n"),
        "tls-host": cas.host_ca_pem.rstrip("\n"),
        "tls-user": cas.user_ca_pem.rstrip("\n"),
    }
    for wanted in (ca_type,) if ca_type else ("user", "host"):
        click.echo(lines[wanted])


def _ssh_key(line: str) -> str:
    """``type base64`` of an OpenSSH public key line, without any comment."""
    return " ".join(line.split()[:2])


def main() -> None:
    cli(prog_name="tctl")


if __name__ == "__main__":
    main()
