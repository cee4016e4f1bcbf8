#!/usr/bin/env bash
# The seed's story on the embedded default (SQLite, loopback), unattended: SSH, then a PostgreSQL database, then
# Kubernetes with the real kubectl. KEEP=1 leaves the cluster (and the demo's PostgreSQL and API server) running
# afterwards to explore.
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

# The database scene's PostgreSQL is a private one: Debian's server binaries (scripts/install-system-deps.sh), a
# cluster of the demo's own under $demo/postgres, trust authentication on loopback only. PostgreSQL refuses to
# run as root, so as root it runs as nobody.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "ERROR: the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/initdb); run scripts/install-system-deps.sh" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  pg_account=nobody
  as_pg() { (cd / && runuser -u "$pg_account" -- "$@"); }
  as_pg_shown="runuser -u $pg_account -- "
else
  as_pg() { (cd / && "$@"); }
  as_pg_shown=""
fi
stop_postgres() { # stop_postgres DIR: the demo's PostgreSQL under DIR, if one runs there
  local real
  [ -e "$1" ] || return 0  # nothing there (a first run)
  real=$(readlink -f "$1")  # the server's account may not reach DIR itself, only where it links to
  if [ -f "$real/data/postmaster.pid" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$real/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  return 0
}

# The Kubernetes scene drives the real kubectl (scripts/install-system-deps.sh installs it).
if ! command -v kubectl >/dev/null; then
  echo "ERROR: kubectl is not installed; run scripts/install-system-deps.sh" >&2
  exit 1
fi

stop_postgres "$demo/postgres"
if [ -f "$demo/kube-apiserver.pid" ]; then
  kill "$(cat "$demo/kube-apiserver.pid")" 2>/dev/null || true
fi
if [ -L "$demo/postgres" ]; then  # a previous run kept it outside the tree (see below)
  rm -rf "$(readlink "$demo/postgres")"
fi
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

stop() {
  [ -n "${db_proxy_pid:-}" ] && kill "$db_proxy_pid" 2>/dev/null  # a tsh proxy db a failed step left behind
  if [ "${KEEP:-0}" = 1 ]; then
    local stop_cmd=""
    if [ -f "$demo/devicetrust.pid" ]; then
      printf '\nCluster left running (pid %s, log %s).\n' "$(cat "$demo/devicetrust.pid")" "$demo/devicetrust.log"
      printf 'Explore with:\n  export DEVICETRUST_CONFIG=%s TSH_HOME=%s PATH=%s:$PATH\n' "$DEVICETRUST_CONFIG" "$TSH_HOME" "$bin"
      # the laptop's TPM and serial number, without which its sessions cannot prove the device
      [ -n "${DEVICETRUST_TPM_TCTI:-}" ] &&
        printf '  export DEVICETRUST_TPM_TCTI=%s DEVICETRUST_TPM_EVENT_LOG=%s DEVICETRUST_ASSET_TAG=%s\n' \
          "$DEVICETRUST_TPM_TCTI" "$DEVICETRUST_TPM_EVENT_LOG" "$DEVICETRUST_ASSET_TAG"
      printf '  tsh status; tsh db ls; tsh db connect pg-prod --db-user=alice --db-name=app; tctl audit ls\n'
      stop_cmd="kill $(cat "$demo/devicetrust.pid")"
    fi
    # the stop command covers everything the demo started: the cluster, the laptop's swtpm, the PostgreSQL
    [ -d "$demo/alice-laptop/tpm" ] &&
      stop_cmd+="${stop_cmd:+; }$(printf '%q' "$bin/python") -m devicetrust.device.swtpm stop --dir $(printf '%q' "$demo/alice-laptop/tpm")"
    if [ -f "$demo/postgres/data/postmaster.pid" ]; then
      printf 'PostgreSQL left running on 127.0.0.1:%s (log %s): psql "host=127.0.0.1 port=%s user=postgres"\n' \
        "$pg_port" "$pg_home/postgres.log" "$pg_port"
      stop_cmd+="${stop_cmd:+; }${as_pg_shown}$(printf '%q' "$pg_bin/pg_ctl") -D $(printf '%q' "$pg_home/data") stop"
    fi
    if [ -f "$demo/kube-apiserver.pid" ]; then
      printf 'The fake Kubernetes API server left running (pid %s): KUBECONFIG=%s kubectl get pods\n' \
        "$(cat "$demo/kube-apiserver.pid")" "$demo/alice-laptop/kubeconfig"
      stop_cmd+="${stop_cmd:+; }kill $(cat "$demo/kube-apiserver.pid")"
    fi
    [ -n "$stop_cmd" ] && printf 'Stop it with: %s\n' "$stop_cmd"
  else
    [ -f "$demo/kube-apiserver.pid" ] && kill "$(cat "$demo/kube-apiserver.pid")" 2>/dev/null
    [ -f "$demo/devicetrust.pid" ] && kill "$(cat "$demo/devicetrust.pid")" 2>/dev/null
    [ -d "$demo/alice-laptop/tpm" ] && "$bin/python" -m devicetrust.device.swtpm stop --dir "$demo/alice-laptop/tpm" 2>/dev/null
    stop_postgres "$demo/postgres"
    # a cluster kept under /tmp goes with the run
    [ -L "$demo/postgres" ] && rm -rf "$(readlink "$demo/postgres")" "$demo/postgres"
    wait 2>/dev/null || true
  fi
}
trap stop EXIT

pg_version=$("$pg_bin/postgres" --version | awk '{print $3}')
pg_port=$(pick_port 55432)
pg_home=$demo/postgres
mkdir -p "$pg_home"
if [ -n "$as_pg_shown" ]; then
  chown "$pg_account" "$pg_home"
  if ! as_pg test -w "$pg_home"; then
    # nobody cannot reach this tree (a home directory of mode 0700): keep the cluster under /tmp, linked from here
    rmdir "$pg_home"
    pg_home=$(mktemp -d /tmp/devicetrust-demo-postgres.XXXXXX)
    chown "$pg_account" "$pg_home"
    ln -s "$pg_home" "$demo/postgres"
  fi
fi
pg() { # pg LOG PROGRAM ARGS…: one of PostgreSQL's server programs, shown, run as the server's account, logged to LOG
  local log=$1
  shift
  local shown=""
  for arg in "${@:2}"; do [[ $arg == *" "* ]] && shown+=" \"$arg\"" || shown+=" $arg"; done
  printf '$ %s%s%s\n' "$as_pg_shown" "$1" "$shown"
  as_pg "$pg_bin/$1" "${@:2}" >"$log" 2>&1 || { cat "$log" >&2; echo "ERROR: $1 failed" >&2; exit 1; }
}
sql() { # sql CONNINFO STATEMENT…: psql runs each statement, stops at the first error
  local conninfo=$1 shown=""
  shift
  for statement in "$@"; do shown+=" -c \"$statement\""; done
  printf '$ psql -X -v ON_ERROR_STOP=1 "%s"%s\n' "$conninfo" "$shown"
  psql -X -v ON_ERROR_STOP=1 "$conninfo" "${@/#/--command=}"
}
step "A PostgreSQL of the demo's own for the database scene (PostgreSQL $pg_version, trust authentication on 127.0.0.1:$pg_port)"
pg "$pg_home/initdb.log" initdb -D "$pg_home/data" --auth=trust --username=postgres --no-locale --encoding=UTF8
# loopback only, no Unix socket: nothing here touches another PostgreSQL on this machine
pg "$pg_home/pg_ctl.log" pg_ctl -D "$pg_home/data" -l "$pg_home/postgres.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=''" start
sql "host=127.0.0.1 port=$pg_port user=postgres dbname=postgres" "CREATE ROLE alice LOGIN" "CREATE DATABASE app OWNER alice"
sql "host=127.0.0.1 port=$pg_port user=alice dbname=app" \
  "CREATE TABLE payments (id serial PRIMARY KEY, customer text NOT NULL, amount numeric(10, 2) NOT NULL)" \
  "INSERT INTO payments (customer, amount) VALUES ('ACME Corp', 1250.00), ('Globex', 980.50), ('Initech', 42.00)"

step "A Kubernetes API server for the Kubernetes scene: the test suite's fake (tests/fakes/kube_apiserver.py)"
# No real API server is packaged on Debian; the fake speaks what kubectl uses of one (discovery, pods, logs, exec
# over WebSocket, impersonation, metav1.Status errors) over HTTPS with its own CA, and trusts one service account
# token, which the kube service presents.
printf '$ python -m tests.fakes.kube_apiserver serve --dir %s &\n' "$demo/kube-apiserver"
"$bin/python" -m tests.fakes.kube_apiserver serve --dir "$demo/kube-apiserver" >"$demo/kube-apiserver.log" 2>&1 &
echo $! >"$demo/kube-apiserver.pid"
for _ in $(seq 1 100); do [ -f "$demo/kube-apiserver/endpoint.json" ] && break; sleep 0.1; done
[ -f "$demo/kube-apiserver/endpoint.json" ] || {
  cat "$demo/kube-apiserver.log" >&2; echo "ERROR: the API server did not start" >&2; exit 1; }
kube_endpoint() { "$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$demo/kube-apiserver/endpoint.json" "$1"; }
echo "API server at $(kube_endpoint api_server), CA $(kube_endpoint ca_file)"

ssh_port=$(pick_port 3022)
db_port=$(pick_port 5433)
kube_port=$(pick_port 3026)
step "Start a cluster (embedded default: SQLite under $demo/data, auth on $proxy, an SSH node on :$ssh_port, a database service on :$db_port, a kube service on :$kube_port)"
run devicetrust configure --data-dir "$demo/data" --listen-addr "$proxy" --ssh-listen-addr "127.0.0.1:$ssh_port" \
  -o "$DEVICETRUST_CONFIG"
# The node plays the seed's prod-server.
sed -i 's/^  # hostname: .*/  hostname: prod-server/' "$DEVICETRUST_CONFIG"
# The database service puts the PostgreSQL above behind device trust as pg-prod.
cat >>"$DEVICETRUST_CONFIG" <<EOF
db_service:
  enabled: true
  listen_addr: 127.0.0.1:$db_port
  databases:
    - name: pg-prod
      protocol: postgres
      uri: postgres://127.0.0.1:$pg_port
      labels:
        env: prod
kube_service:
  enabled: true
  listen_addr: 127.0.0.1:$kube_port
  kubernetes_clusters:
    - name: prod
      api_server: $(kube_endpoint api_server)
      ca_file: $(kube_endpoint ca_file)
      token_file: $(kube_endpoint token_file)  # a service account that may impersonate
      labels:
        env: prod
EOF
run sed -n '/^db_service:/,$p' "$DEVICETRUST_CONFIG"
devicetrust start >"$demo/devicetrust.log" 2>&1 &
echo $! >"$demo/devicetrust.pid"
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
invite_json=$(tctl users add alice --roles=access --logins="alice,$login" --db-users=alice --db-names=app \
  --kubernetes-groups=viewers --format=json)
token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["invite_token"])' <<<"$invite_json")
printf '$ tctl users add alice --roles=access --logins=alice,%s --db-users=alice --db-names=app --kubernetes-groups=viewers\n' "$login"
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

step "Databases: the same roles and the same device proof, for PostgreSQL"
# The seed's role grants db_labels/db_names/db_users '*'; a database is reached through the database service,
# which asks, per connection, for a fresh proof from the device like the SSH node does.
for _ in $(seq 1 100); do  # the service announces its database within seconds of the start
  tsh db ls 2>/dev/null | grep -q pg-prod && break
  sleep 0.2
done
run tsh db ls
run tsh db login pg-prod --db-user=alice --db-name=app
query="SELECT current_user, current_database(), count(*) AS payments, sum(amount) AS total FROM payments;"
printf '$ echo "%s" | tsh db connect pg-prod --db-user=alice --db-name=app\n' "$query"
tsh db connect pg-prod --db-user=alice --db-name=app <<<"$query"

step "tsh proxy db: a loopback listener for any PostgreSQL client, each connection proven by the laptop"
local_port=$(pick_port 15432)
printf '$ tsh proxy db pg-prod --port=%s &\n' "$local_port"
tsh proxy db pg-prod --port="$local_port" >"$demo/proxy-db.out" 2>&1 &
db_proxy_pid=$!
for _ in $(seq 1 150); do
  grep -q '^Started DB proxy' "$demo/proxy-db.out" && break
  if ! kill -0 "$db_proxy_pid" 2>/dev/null; then
    cat "$demo/proxy-db.out" >&2; echo "ERROR: tsh proxy db did not start" >&2; exit 1
  fi
  sleep 0.2
done
cat "$demo/proxy-db.out"
sql "host=127.0.0.1 port=$local_port user=alice dbname=app sslmode=disable" \
  "SELECT customer, amount FROM payments ORDER BY amount DESC"
kill "$db_proxy_pid" && wait "$db_proxy_pid" 2>/dev/null || true
db_proxy_pid=

step "The thief's copy of the profile reaches no database either: psql gets PostgreSQL's own error"
printf '$ echo "SELECT * FROM payments;" | TSH_HOME=%s DEVICETRUST_TPM_TCTI=<no TPM here> tsh db connect pg-prod --db-user=alice --db-name=app\n' \
  "$demo/thief-tsh"
if stolen=$(TSH_HOME=$demo/thief-tsh DEVICETRUST_TPM_TCTI="swtpm:host=127.0.0.1,port=$(pick_port 0)" \
    tsh db connect pg-prod --db-user=alice --db-name=app <<<"SELECT * FROM payments;" 2>&1); then
  echo "ERROR: the copied profile opened a database session" >&2; exit 1
fi
echo "$stolen"
grep -q 'FATAL:  access to resource requires a trusted device' <<<"$stolen" || {
  echo "ERROR: unexpected rejection text for the copied profile" >&2; exit 1; }

step "Kubernetes: the real kubectl through the kube service, with the same roles and the same device proof"
# tsh kube login writes a kubeconfig context whose credentials come from 'tsh kube credentials', which proves
# the laptop's TPM for the cluster; the kube service forwards each request impersonating what the roles grant
# (kubernetes_groups: {{internal.kubernetes_groups}} and developers).
export KUBECONFIG=$laptop/kubeconfig
kubectl() { command kubectl --cache-dir="$demo/kube-cache" "$@"; }
for _ in $(seq 1 100); do  # the service announces its cluster within seconds of the start
  tsh kube ls 2>/dev/null | grep -q prod && break
  sleep 0.2
done
run tsh kube ls
run tsh kube login prod
run kubectl get pods -n default
run kubectl auth whoami
run kubectl exec web-0 -- echo "hello from web-0"
printf '$ echo "typed on the laptop" | kubectl exec -i web-0 -- cat\n'
kubectl exec -i web-0 -- cat <<<"typed on the laptop"

step "The thief's copy of the profile: kubectl gets the kube service's refusal, as an API server's Forbidden"
thief_env=(TSH_HOME="$demo/thief-tsh" KUBECONFIG="$demo/thief-kubeconfig"
  DEVICETRUST_TPM_TCTI="swtpm:host=127.0.0.1,port=$(pick_port 0)")
printf '$ TSH_HOME=%s KUBECONFIG=%s tsh kube login prod\n' "$demo/thief-tsh" "$demo/thief-kubeconfig"
env "${thief_env[@]}" tsh kube login prod
printf '$ TSH_HOME=%s KUBECONFIG=%s DEVICETRUST_TPM_TCTI=<no TPM here> kubectl exec web-0 -- cat /etc/secrets\n' \
  "$demo/thief-tsh" "$demo/thief-kubeconfig"
if stolen=$(env "${thief_env[@]}" kubectl exec web-0 -- cat /etc/secrets 2>&1); then
  echo "ERROR: the copied profile reached the Kubernetes API" >&2; exit 1
fi
echo "$stolen"
[ "$(tail -n 1 <<<"$stolen")" = "Error from server (Forbidden): access to resource requires a trusted device" ] || {
  echo "ERROR: unexpected rejection text for the copied profile" >&2; exit 1; }

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
printf '$ tctl audit ls --type=db.session.start --format=json   # each database connection: admitted with its device, or refused\n'
tctl audit ls --type=db.session.start --format=json | python3 -c '
import json, sys
events = json.load(sys.stdin)
if not any(e["success"] and e.get("device") for e in events) or all(e["success"] for e in events):
    sys.exit("ERROR: expected db.session.start events both admitted with a device and refused")
for e in events:
    verdict = "device " + e["device"]["asset_tag"] if e["success"] else "refused: " + str(e.get("error"))
    print("%s -> %s as %s, database %s: %s" % (e["user"], e["db_service"], e["db_user"], e["db_name"], verdict))'

printf '$ tctl audit ls --type=kube.request --format=json   # each Kubernetes request, exec included, with its device\n'
tctl audit ls --type=kube.request --format=json | python3 -c '
import json, sys
events = json.load(sys.stdin)
execs = [e for e in events if e.get("resource_subresource") == "exec" and e["success"] and e.get("device")]
refused = [e for e in events if not e["success"] and e["response_code"] == 403]
if not execs or not refused:
    sys.exit("ERROR: expected kube.request events for an exec with a device and for a refusal")
for e in (execs[-1], refused[-1]):
    verdict = "device " + e["device"]["asset_tag"] if e["success"] else "refused: " + str(e.get("error"))
    print("%s %s %s -> %s: %s" % (e["user"], e["verb"], e["request_path"], e["response_code"], verdict))'

printf '\nDemo complete: alice was rejected from prod-server from an untrusted laptop, then admitted once the\n'
printf 'laptop was registered and enrolled with its TPM; psql and kubectl reached pg-prod and the prod Kubernetes\n'
printf 'cluster from that laptop, each connection proven by its TPM; a copy of her profile on another machine was\n'
printf 'rejected by the node, the database and the kube service; the audit log names the device behind each session.\n'
