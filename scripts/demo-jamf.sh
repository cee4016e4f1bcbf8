#!/usr/bin/env bash
# MDM inventory sync, unattended: a fake Jamf Pro (loopback, HTTPS with its own CA) serves realistic inventory
# JSON; the cluster's jamf_service syncs it; tctl devices ls shows it; a Mac retired in Jamf disappears on the
# next full sync. KEEP=1 leaves the cluster and the fake running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/.demo-jamf
bin=$root/.venv/bin
export PATH="$bin:$PATH"

step() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
free_port() { "$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for pidfile in "$demo"/*.pid; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
rm -rf "$demo"
mkdir -p "$demo"
stop() {
  if [ "${KEEP:-0}" = 1 ]; then
    printf '\nLeft running: cluster (pid %s) and fake Jamf (pid %s).\n' "$(cat "$demo/devicetrust.pid")" "$(cat "$demo/jamf.pid")"
    printf 'export DEVICETRUST_CONFIG=%s PATH=%s:$PATH\n' "$DEVICETRUST_CONFIG" "$bin"
  else
    kill "$(cat "$demo/devicetrust.pid")" "$(cat "$demo/jamf.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
}
trap stop EXIT

step "A fake Jamf Pro with the inventory in examples/jamf/"
"$bin/python" -m tests.fakes.jamf.server serve --dir "$demo/jamf" \
  --computers examples/jamf/computers.json --mobile-devices examples/jamf/mobile-devices.json \
  >"$demo/jamf.log" 2>&1 &
echo $! >"$demo/jamf.pid"
for _ in $(seq 1 100); do [ -f "$demo/jamf/endpoint.json" ] && break; sleep 0.1; done
[ -f "$demo/jamf/endpoint.json" ] || { cat "$demo/jamf.log" >&2; exit 1; }
endpoint() { "$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$demo/jamf/endpoint.json" "$1"; }
echo "Jamf Pro API at $(endpoint api_endpoint)"

step "A cluster whose devicetrust.yaml enables the Jamf service"
export DEVICETRUST_CONFIG=$demo/devicetrust.yaml
run devicetrust configure --data-dir "$demo/data" --listen-addr "127.0.0.1:$(free_port)" \
  --ssh-listen-addr "127.0.0.1:$(free_port)" -o "$DEVICETRUST_CONFIG"
cat >>"$DEVICETRUST_CONFIG" <<YAML
jamf_service:
  enabled: true
  name: jamf
  api_endpoint: $(endpoint api_endpoint)
  client_id: $(endpoint client_id)
  client_secret_file: $(endpoint client_secret_file)
  ca_file: $(endpoint ca_file)
  inventory:
    - filter_rsql: 'general.remoteManagement.managed==true'
      sync_period_partial: 6h
      sync_period_full: 24h
      on_missing: DELETE
      page_size: 500
YAML
sed -n '/^jamf_service:/,$p' "$DEVICETRUST_CONFIG"
devicetrust start >"$demo/devicetrust.log" 2>&1 &
echo $! >"$demo/devicetrust.pid"
for _ in $(seq 1 150); do
  [ -f "$demo/data/admin/identity.json" ] && tctl status >/dev/null 2>&1 && break
  kill -0 "$(cat "$demo/devicetrust.pid")" 2>/dev/null || { cat "$demo/devicetrust.log" >&2; exit 1; }
  sleep 0.2
done

step "The service's first full sync registers the managed Macs"
count_jamf() { tctl devices ls --format=json | "$bin/python" -c \
  'import json,sys; print(sum(1 for d in json.load(sys.stdin) if (d["spec"].get("source") or {}).get("name") == "jamf"))'; }
for _ in $(seq 1 150); do [ "$(count_jamf)" -gt 0 ] && break; sleep 0.2; done
sleep 1
run tctl devices ls
before=$(count_jamf)
[ "$before" -gt 0 ] || { echo "ERROR: no devices were synced from Jamf" >&2; exit 1; }

step "Retire Frank's MacBook Air (Jamf id 7) in Jamf; a full sync removes it"
echo 7 >"$demo/jamf/retire"
run devicetrust jamf sync --once --full
after=$(count_jamf)
run tctl devices ls
echo "Devices from Jamf: $before before, $after after the full sync"
[ "$after" -eq $((before - 1)) ] || { echo "ERROR: the retired Mac was not removed" >&2; exit 1; }

step "The audit trail of the syncs"
tctl audit ls --limit=8 | cut -c1-110

printf '\nDemo complete: the Jamf inventory was synced into the cluster and a retired Mac was removed.\n'
