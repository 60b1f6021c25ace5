#!/usr/bin/env bash
# Runs the Autobahn TestSuite's fuzzing client against `smolchat --protocol raw`, in which a
# client's messages come back to it, so the suite's echo cases apply as they are. The runner is
# kosoku (PyPI), which drives the Autobahn case files on Python 3; it is installed in a virtual
# environment under target/.
#
#   scripts/autobahn.sh            cases 1-7, 9 and 10; fails if any case FAILED
#   scripts/autobahn.sh --write    the same, and writes the summary into docs/autobahn.md
#
# Reports (HTML and JSON per case) go to target/autobahn/. Only loopback is used.
set -euo pipefail
cd "$(dirname "$0")/.."

write=0
[ "${1:-}" = --write ] && write=1

KOSOKU_VERSION=0.1.0
venv=target/autobahn-venv
if [ ! -x "$venv/bin/kosoku" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q "kosoku==$KOSOKU_VERSION"
fi

cargo build --locked --release --bin smolchat >&2
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=19001
while ! port_free "$port"; do port=$((port + 1)); done

# The suite's own limits: messages up to 16 MiB, as fast as it sends them.
server_args=(--protocol raw --rate-limit 0 --max-message-bytes 16777216)
target/release/smolchat "${server_args[@]}" --listen "127.0.0.1:$port" --log-level warn \
  >target/autobahn-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do port_free "$port" || break; sleep 0.1; done

out=target/autobahn
rm -rf "$out"
cases=(-i '1.*' -i '2.*' -i '3.*' -i '4.*' -i '5.*' -i '6.*' -i '7.*' -i '9.*' -i '10.*')
echo "kosoku $KOSOKU_VERSION: cases 1-7, 9, 10 against smolchat ${server_args[*]}" >&2
timeout 1200 "$venv/bin/kosoku" "${cases[@]}" -o "$out" "ws://127.0.0.1:$port/ws" | tail -n 20 >&2
kill -0 "$server" 2>/dev/null || { echo "autobahn: the server died; see target/autobahn-server.log" >&2; exit 1; }

# Cases by result, and every case that is not OK with its note.
python3 - "$out/index.json" "$write" "$KOSOKU_VERSION" "${server_args[*]}" <<'EOF'
import collections, json, subprocess, sys, datetime
index, write, version, args = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
results = next(iter(json.load(open(index)).values()))
order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
behavior = collections.Counter(r["behavior"] for r in results.values())
close = collections.Counter(r["behaviorClose"] for r in results.values())
key = lambda c: [int(p) for p in c.split(".")]
lines = [
    "| result | behavior | close behavior |",
    "|---|--:|--:|",
]
lines += [f"| {name} | {behavior.get(name, 0)} | {close.get(name, 0)} |" for name in order]
lines.append(f"| **cases** | **{len(results)}** | |")
lines += ["", "Cases not plainly OK:", "", "| case | behavior | close behavior |", "|---|---|---|"]
for case in sorted(results, key=key):
    r = results[case]
    if r["behavior"] != "OK" or r["behaviorClose"] != "OK":
        lines.append(f"| {case} | {r['behavior']} | {r['behaviorClose']} |")
table = "\n".join(lines)
print(table)
failed = [c for c, r in results.items() if "FAILED" in (r["behavior"], r["behaviorClose"])]
if write:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = open("docs/autobahn.md").read()
    start, end = "<!-- results -->", "<!-- /results -->"
    before, rest = doc.split(start, 1)
    after = rest.split(end, 1)[1]
    body = f"\n{date}, commit `{commit}`, kosoku {version}, `smolchat {args}`:\n\n{table}\n"
    open("docs/autobahn.md", "w").write(before + start + body + end + after)
if failed:
    print(f"autobahn: {len(failed)} case(s) FAILED: {', '.join(sorted(failed, key=key))}", file=sys.stderr)
    sys.exit(1)
print(f"autobahn: {len(results)} cases, none failed", file=sys.stderr)
EOF
