"""One SSH session channel: a command or a shell, with or without a PTY, run as the login's OS account.

Sessions run in their own process session (``setsid``). As root the child switches to the login's uid, gid and
supplementary groups (``initgroups`` semantics) before it executes anything; a non-root node can only run
sessions as its own account (checked before the channel is accepted, see :func:`lookup_account`).

A PTY session gets a fresh ``pty.openpty()`` pair; the child makes the slave its controlling terminal (one
``TIOCSCTTY`` ioctl in ``preexec_fn``, after the uid switch, so job control and ^C work), the node pumps the
master to the channel and applies window changes with ``TIOCSWINSZ`` (the kernel then sends ``SIGWINCH``).

Every session process starts with default signal dispositions and an empty signal mask, whatever the node runs
under, so the SIGHUP that ends a session (a lock, node shutdown) ends it without waiting for SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pty
import pwd
import signal
import struct
import termios
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import asyncssh

__all__ = ["LoginAccount", "NodeSession", "lookup_account"]

log = logging.getLogger(__name__)

#: Bytes read from a process (pipe or PTY master) at a time.
READ_CHUNK_BYTES = 64 * 1024
#: Bytes of client input buffered for a process before the channel stops reading from the client.
STDIN_HIGH_WATER_BYTES = 256 * 1024
#: After a PTY session's process exits, how long to keep reading output still in the terminal buffer.
PTY_DRAIN_SECONDS = 0.5
#: Between SIGHUP and SIGKILL when a session is torn down.
KILL_GRACE_SECONDS = 2.0
#: Exit status reported when the node ends a session (a lock, node shutdown), as OpenSSH's client uses.
TERMINATED_EXIT_STATUS = 255
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Client environment variables passed to sessions (OpenSSH's usual AcceptEnv).
ACCEPTED_CLIENT_ENV_PREFIXES = ("LANG", "LC_")
_SIGNALS = {name: getattr(signal, f"SIG{name}") for name in ("HUP", "INT", "QUIT", "TERM", "KILL", "USR1", "USR2")}
_CATCHABLE_SIGNALS = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))


@dataclass(frozen=True)
class LoginAccount:
    """The OS account a login maps to."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]


def lookup_account(login: str) -> LoginAccount | None:
    """The account named ``login`` on this host, or None if there is none."""
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        return None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return LoginAccount(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell or "/bin/sh", groups)


class SpawnOptions(TypedDict, total=False):
    """How a session's process is started (``asyncio.create_subprocess_exec``'s keywords)."""

    cwd: str
    env: dict[str, str]
    start_new_session: bool
    close_fds: bool
    preexec_fn: Callable[[], None]
    user: int
    group: int
    extra_groups: list[int]


def _reset_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Default dispositions and an empty signal mask, as sshd gives a session: what the node inherited (SIGHUP
    ignored under nohup, say) must not keep a lock's SIGHUP from ending the session."""
    for number in _CATCHABLE_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _reset_signals_and_take_terminal() -> None:  # pragma: no cover - runs in the child between fork and exec
    _reset_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_window_size(fd: int, width: int, height: int, pixwidth: int, pixheight: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


class NodeSession(asyncssh.SSHServerSession[bytes]):
    """Runs what the client asked for and wires its I/O, exit status and window changes to the channel."""

    def __init__(
        self,
        *,
        account: LoginAccount,
        env: Mapping[str, str],
        on_end: Callable[[NodeSession, int | None], None],
        agent_forwarding: bool,
    ) -> None:
        self.account = account
        self._base_env = dict(env)
        self._on_end = on_end
        self._agent_forwarding = agent_forwarding
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command: str | None = None
        self._term: tuple[str, tuple[int, int, int, int]] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._master: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._pending_input: list[bytes] = []
        self._pty_input = bytearray()
        self._output_done = asyncio.Event()
        self._input_eof = False
        self._closed = False
        self._ended = False
        self._exit_status: int | None = None
        self.terminated: str | None = None

    # ------------------------------------------------------------------------------------------ channel events
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self._term = (term_type or "xterm", term_size)
        return True

    def shell_requested(self) -> bool:
        self._command = None
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False  # no sftp/scp subsystems on this node

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._process is None:
            self._pending_input.append(data)
        else:
            self._write_input(data)

    def eof_received(self) -> bool:
        self._input_eof = True
        if self._process is not None and self._master is None and self._process.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._process.stdin.close()
        return True  # keep our half open: output and the exit status still have to go out

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._term is not None:
            self._term = (self._term[0], (width, height, pixwidth, pixheight))
        if self._master is not None:
            _set_window_size(self._master, width, height, pixwidth, pixheight)

    def signal_received(self, signame: str) -> None:
        number = _SIGNALS.get(signame)
        if number is not None:
            self._signal_group(number)

    def break_received(self, msec: int) -> bool:
        return False

    def pause_writing(self) -> None:
        self._writable.clear()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)

    def resume_writing(self) -> None:
        self._writable.set()
        if self._master is not None and not self._output_done.is_set():
            asyncio.get_running_loop().add_reader(self._master, self._read_master)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()
        if self._process is not None and self._process.returncode is None:
            self._kill()
        elif self._task is None or self._task.done():
            self._end()

    # ------------------------------------------------------------------------------------------ control
    def terminate(self, reason: str) -> None:
        """End the session now (a lock took effect): tell the user why, stop the process, close the channel."""
        if self._closed or self._chan is None:
            return
        self.terminated = reason
        with contextlib.suppress(Exception):
            self._chan.write_stderr(f"\r\n{reason}\r\n".encode())
            self._chan.exit(TERMINATED_EXIT_STATUS)
        self._closed = True
        self._kill()

    @property
    def exit_status(self) -> int | None:
        return self._exit_status

    # ------------------------------------------------------------------------------------------ process
    def _environment(self) -> dict[str, str]:
        assert self._chan is not None
        env = {
            "HOME": self.account.home,
            "USER": self.account.name,
            "LOGNAME": self.account.name,
            "SHELL": self.account.shell,
            "PATH": DEFAULT_PATH,
            **self._base_env,
        }
        for key, value in self._chan.get_environment().items():
            if isinstance(key, str) and isinstance(value, str) and key.startswith(ACCEPTED_CLIENT_ENV_PREFIXES):
                env[key] = value
        if self._term is not None:
            env["TERM"] = self._term[0]
        agent_path = self._chan.get_agent_path()
        if agent_path and self._agent_forwarding:
            self._hand_over_agent_socket(agent_path)
            env["SSH_AUTH_SOCK"] = agent_path
        return env

    def _hand_over_agent_socket(self, agent_path: str) -> None:
        if os.geteuid() != 0 or self.account.uid == 0:
            return
        for path in (Path(agent_path).parent, Path(agent_path)):
            with contextlib.suppress(OSError):
                os.chown(path, self.account.uid, self.account.gid)

    def _spawn_options(self, *, pty: bool = False) -> SpawnOptions:
        home = self.account.home if Path(self.account.home).is_dir() else "/"
        options: SpawnOptions = {
            "cwd": home,
            "env": self._environment(),
            "start_new_session": True,
            "close_fds": True,
            "preexec_fn": _reset_signals_and_take_terminal if pty else _reset_signals,
        }
        if os.geteuid() == 0 and self.account.uid != 0:
            options.update(
                {"user": self.account.uid, "group": self.account.gid, "extra_groups": list(self.account.groups)}
            )
        return options

    def _argv(self) -> tuple[str, list[str]]:
        """The program to execute and its argv (argv[0] first)."""
        shell = self.account.shell
        if self._command is None:
            return shell, [f"-{Path(shell).name}"]  # a login shell, as sshd starts it
        return shell, [shell, "-c", self._command]

    async def _run(self) -> None:
        assert self._chan is not None
        status: int | None = None
        try:
            if self._term is not None:
                status = await self._run_pty()
            else:
                status = await self._run_pipes()
        except OSError as err:
            log.warning("session process failed to start", extra={"login": self.account.name, "error": str(err)})
            self._send_exit(None, f"cannot start a session as {self.account.name}: {err.strerror or err}")
        else:
            self._exit_status = status
            self._send_exit(status)
        finally:
            self._end()

    def _send_exit(self, status: int | None, message: str = "") -> None:
        if self._closed or self._chan is None:
            return
        with contextlib.suppress(Exception):
            if message:
                self._chan.write_stderr(f"{message}\r\n".encode())
            if status is None:
                self._chan.exit(TERMINATED_EXIT_STATUS)
            elif status < 0:
                name = signal.Signals(-status).name.removeprefix("SIG")
                self._chan.exit_with_signal(name)
            else:
                self._chan.exit(status)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._master is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._master)
                asyncio.get_running_loop().remove_writer(self._master)
            os.close(self._master)
            self._master = None
        self._on_end(self, self._exit_status)

    async def _run_pipes(self) -> int:
        executable, argv = self._argv()
        process = await asyncio.create_subprocess_exec(
            *argv,
            executable=executable,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **self._spawn_options(),
        )
        self._process = process
        self._flush_pending_input()
        assert process.stdout is not None and process.stderr is not None
        assert self._chan is not None
        chan = self._chan
        await asyncio.gather(
            self._pump(process.stdout, chan.write),
            self._pump(process.stderr, chan.write_stderr),
        )
        return await process.wait()

    async def _pump(self, stream: asyncio.StreamReader, write: Callable[[bytes], None]) -> None:
        while data := await stream.read(READ_CHUNK_BYTES):
            await self._writable.wait()
            if not self._closed:
                with contextlib.suppress(Exception):
                    write(data)

    async def _run_pty(self) -> int:
        assert self._term is not None
        master, slave = pty.openpty()
        try:
            _set_window_size(slave, *self._term[1])
            executable, argv = self._argv()
            process = await asyncio.create_subprocess_exec(
                *argv,
                executable=executable,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                **self._spawn_options(pty=True),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read_master)
        self._process = process
        self._flush_pending_input()
        status = await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._output_done.wait(), PTY_DRAIN_SECONDS)
        return status

    def _read_master(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: every slave descriptor is closed, the terminal is done
                log.debug("pty read failed", extra={"error": str(err)})
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
            self._output_done.set()
            return
        if not self._closed and self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.write(data)

    def _write_input(self, data: bytes) -> None:
        process = self._process
        assert process is not None
        if self._master is not None:
            self._pty_input += data
            self._write_master()
            return
        if process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(data)
        transport = process.stdin.transport
        if transport.get_write_buffer_size() > STDIN_HIGH_WATER_BYTES and self._chan is not None:
            self._chan.pause_reading()
            asyncio.get_running_loop().create_task(self._drain_stdin(process.stdin))

    async def _drain_stdin(self, stdin: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await stdin.drain()
        if self._chan is not None and not self._closed:
            self._chan.resume_reading()

    def _write_master(self) -> None:
        master = self._master
        if master is None:
            return
        loop = asyncio.get_running_loop()
        try:
            while self._pty_input:
                written = os.write(master, self._pty_input)
                del self._pty_input[:written]
        except BlockingIOError:
            pass
        except OSError:
            self._pty_input.clear()
        if self._pty_input:
            loop.add_writer(master, self._write_master)
            if len(self._pty_input) > STDIN_HIGH_WATER_BYTES and self._chan is not None:
                self._chan.pause_reading()
        else:
            loop.remove_writer(master)
            if self._chan is not None and not self._closed:
                self._chan.resume_reading()

    def _flush_pending_input(self) -> None:
        if self._closed:  # the channel went away while the process was starting
            self._kill()
            return
        pending, self._pending_input = self._pending_input, []
        for data in pending:
            self._write_input(data)
        if self._input_eof:
            self.eof_received()

    def _signal_group(self, number: int) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, number)

    def _kill(self) -> None:
        """SIGHUP the session's process group, SIGKILL it if it is still there after a grace period."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._signal_group(signal.SIGHUP)
        asyncio.get_running_loop().call_later(KILL_GRACE_SECONDS, self._signal_group, signal.SIGKILL)
