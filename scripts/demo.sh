#!/usr/bin/env bash
# The seed's story on the embedded default (SQLite, loopback), unattended.
# KEEP=1 leaves the cluster running afterwards to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/.demo
bin=$root/.venv/bin
export PATH="$bin:$PATH"

pick_port() {
  python3 - "$1" <<'PY'
import socket, sys
want = int(sys.argv[1])
for port in (want, 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1]); s.close(); break
PY
}

if [ -f "$demo/devicetrust.pid" ] && kill -0 "$(cat "$demo/devicetrust.pid")" 2>/dev/null; then
  kill "$(cat "$demo/devicetrust.pid")" && sleep 1
fi
if [ -d "$demo/alice-laptop/tpm" ]; then
  "$bin/python" -m devicetrust.device.swtpm stop --dir "$demo/alice-laptop/tpm" 2>/dev/null || true
fi
rm -rf "$demo"
mkdir -p "$demo"
port=$(pick_port 3080)
proxy=127.0.0.1:$port
export DEVICETRUST_CONFIG=$demo/devicetrust.yaml
export TSH_HOME=$demo/alice-laptop/.tsh
password="correct horse battery staple"

step() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

ssh_port=$(pick_port 3022)
step "Start a cluster (embedded default: SQLite under $demo/data, auth on $proxy, an SSH node on :$ssh_port)"
run devicetrust configure --data-dir "$demo/data" --listen-addr "$proxy" --ssh-listen-addr "127.0.0.1:$ssh_port" \
  -o "$DEVICETRUST_CONFIG"
# The node plays the seed's prod-server.
sed -i 's/^  # hostname: .*/  hostname: prod-server/' "$DEVICETRUST_CONFIG"
devicetrust start >"$demo/devicetrust.log" 2>&1 &
echo $! >"$demo/devicetrust.pid"
stop() {
  if [ "${KEEP:-0}" = 1 ]; then
    printf '\nCluster left running (pid %s, log %s).\n' "$(cat "$demo/devicetrust.pid")" "$demo/devicetrust.log"
    printf 'Explore with:\n  export DEVICETRUST_CONFIG=%s TSH_HOME=%s PATH=%s:$PATH\n' "$DEVICETRUST_CONFIG" "$TSH_HOME" "$bin"
    # the stop command covers everything the demo started: the cluster and, once it exists, the laptop's swtpm
    stop_cmd="kill $(cat "$demo/devicetrust.pid")"
    [ -d "$demo/alice-laptop/tpm" ] &&
      stop_cmd+="; $(printf '%q' "$bin/python") -m devicetrust.device.swtpm stop --dir $(printf '%q' "$demo/alice-laptop/tpm")"
    printf '  tsh status; tctl get roles; tctl audit ls\nStop it with: %s\n' "$stop_cmd"
  else
    kill "$(cat "$demo/devicetrust.pid")" 2>/dev/null || true
    [ -d "$demo/alice-laptop/tpm" ] && "$bin/python" -m devicetrust.device.swtpm stop --dir "$demo/alice-laptop/tpm" 2>/dev/null
    wait 2>/dev/null || true
  fi
}
trap stop EXIT
for _ in $(seq 1 100); do
  [ -f "$demo/data/admin/identity.json" ] && tctl status >/dev/null 2>&1 && break
  if ! kill -0 "$(cat "$demo/devicetrust.pid")" 2>/dev/null; then
    cat "$demo/devicetrust.log" >&2; echo "ERROR: devicetrust did not start" >&2; exit 1
  fi
  sleep 0.2
done
run tctl status

step "An administrator adds alice"
login=$(id -un)
invite_json=$(tctl users add alice --roles=access --logins="alice,$login" --format=json)
token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["invite_token"])' <<<"$invite_json")
printf '$ tctl users add alice --roles=access --logins=alice,%s\n' "$login"
printf 'User "alice" has been created but requires a password. Share this command with the user:\n'
printf 'tsh login --proxy=%s --user=alice --token=%s…\n' "$proxy" "${token:0:8}"

step "alice sets her password and logs in from her laptop"
printf '$ tsh login --proxy=%s --user=alice --token=… --password-stdin\n' "$proxy"
tsh login --proxy="$proxy" --user=alice --token="$token" --password-stdin <<<"$password"

step "Role-based device enforcement (the seed's role, verbatim)"
run cat examples/require-trusted-device.yaml
run tctl create -f examples/require-trusted-device.yaml
run tctl users update alice --set-roles=access,require-trusted-device

step "Cluster-wide device enforcement: tctl edit cluster_auth_preference"
# Unattended, the "editor" writes the seed's cluster_auth_preference over the opened file.
export EDITOR="cp $root/examples/cluster-auth-preference.yaml"
run tctl edit cluster_auth_preference
unset EDITOR
run tctl get cap --format=json

step "alice logs in again for her new roles, and is rejected: her laptop is not a trusted device yet"
run tsh logout
printf '$ tsh login --proxy=%s --user=alice\n' "$proxy"
tsh login --proxy="$proxy" --user=alice --password-stdin <<<"$password" >/dev/null
run tsh ls
for _ in $(seq 1 50); do  # the node picks up the new cluster settings within seconds
  tsh ssh "$login@prod-server" true 2>/dev/null || break
  sleep 0.2
done
printf '$ tsh ssh %s@prod-server uname -a\n' "$login"
if rejected=$(tsh ssh "$login@prod-server" uname -a 2>&1); then
  echo "ERROR: the session was admitted from an untrusted device" >&2; exit 1
fi
echo "$rejected"
[ "$rejected" = "ERROR: ssh: rejected: administratively prohibited (unauthorized device)" ] || {
  echo "ERROR: unexpected rejection text" >&2; exit 1; }

step "alice's laptop: a simulated device with its own TPM 2.0 (swtpm)"
laptop=$demo/alice-laptop
python3=$bin/python
run "$python3" -m devicetrust.device.swtpm manufacture --dir "$laptop/tpm"
tcti=$("$python3" -m devicetrust.device.swtpm start --dir "$laptop/tpm")
"$python3" -m devicetrust.device.swtpm boot --dir "$laptop/tpm" --event-log "$laptop/event.log"
export DEVICETRUST_TPM_TCTI=$tcti DEVICETRUST_TPM_EVENT_LOG=$laptop/event.log
# The simulated laptop's serial number (a real one is read from DMI).
export DEVICETRUST_ASSET_TAG=5CG1234XYZ
echo "TPM at $tcti, serial $DEVICETRUST_ASSET_TAG"
run tsh device asset-tag

step "Device registration: IT adds the laptop to the inventory"
run tctl devices add --os=linux --asset-tag=5CG1234XYZ
run tctl devices ls

step "Device enrollment: an enrollment token, then tsh device enroll on the laptop"
printf '$ tctl devices enroll --asset-tag=5CG1234XYZ\n'
enroll_out=$(tctl devices enroll --asset-tag=5CG1234XYZ)
printf '%s\n' "$enroll_out" | sed -E 's/(--token=.{8}).*/\1…/'
enroll_token=${enroll_out##*--token=}
printf '$ tsh device enroll --token=…\n'
tsh device enroll --token="$enroll_token"

step "alice logs in again: the device authenticates and her certificates carry its identity"
run tsh logout
printf '$ tsh login --proxy=%s --user=alice\n' "$proxy"
tsh login --proxy="$proxy" --user=alice --password-stdin <<<"$password"
run tsh status
tsh status --format=json | python3 -c '
import json, sys
ext = json.load(sys.stdin)["extensions"]
need = {"teleport-device-asset-tag", "teleport-device-credential-id", "teleport-device-id"}
missing = need - set(ext)
sys.exit(f"missing device extensions: {sorted(missing)}" if missing else 0)'
run tctl devices ls
step "The same command from the trusted device is admitted"
run tsh ssh "$login@prod-server" uname -a

step "A thief copies alice's whole profile to another machine: without the laptop's TPM it opens nothing"
# Each session is preceded by a device challenge bound to the node, which only the laptop's TPM can answer.
run cp -r "$TSH_HOME" "$demo/thief-tsh"
printf '$ TSH_HOME=%s DEVICETRUST_TPM_TCTI=<no TPM here> tsh ssh %s@prod-server uname -a
' "$demo/thief-tsh" "$login"
if stolen=$(TSH_HOME=$demo/thief-tsh DEVICETRUST_TPM_TCTI="swtpm:host=127.0.0.1,port=$(pick_port 0)" \
    tsh ssh "$login@prod-server" uname -a 2>&1); then
  echo "ERROR: the copied profile opened a session" >&2; exit 1
fi
echo "$stolen"
[ "$(tail -n 1 <<<"$stolen")" = "ERROR: ssh: rejected: administratively prohibited (unauthorized device)" ] || {
  echo "ERROR: unexpected rejection text for the copied profile" >&2; exit 1; }
step "On the real laptop, alice notices nothing"
run tsh ssh "$login@prod-server" uname -a

step "A bot (machine identity) and an agent join token"
bot_json=$(tctl bots add robot --roles=access --logins=robot --format=json)
bot_token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$bot_json")
printf '$ tctl bots add robot --roles=access --logins=robot\n'
printf '$ tsh login --proxy=%s --bot --token=…\n' "$proxy"
TSH_HOME=$demo/robot/.tsh tsh login --proxy="$proxy" --bot --token="$bot_token"
printf '$ tctl tokens add --type=node\n'
tctl tokens add --type=node | sed -E 's/(invite token: .{8}).*/\1…/'

step "The audit trail"
run tctl audit ls --since=1h
printf '$ tctl audit ls --type=session.start --format=json   # the device behind the session\n'
tctl audit ls --type=session.start --format=json | python3 -c '
import json, sys
events = [e for e in json.load(sys.stdin) if e.get("device")]
if not events:
    sys.exit("ERROR: no session.start event with a device block")
e = events[-1]
print(json.dumps({"event": e["event"], "user": e["user"], "device": e["device"]}, indent=2))'

printf '\nDemo complete: alice was rejected from prod-server from an untrusted laptop, then admitted once the\n'
printf 'laptop was registered and enrolled with its TPM; a copy of her profile on another machine was rejected;\n'
printf 'the audit log names the device behind the session.\n'
