#!/usr/bin/env python3
"""Checks every command line README.md and docs/*.md give for the smolchat binary.

Usage: python3 scripts/doc-check.py [--no-build] [--list]

Finds every command that starts the server (`smolchat ...`, `./smolchat ...`,
`cargo run --release [--features F] -- ...`) or runs a subcommand (`smolchat token ...`), in
shell code blocks (```sh, ```bash, ```console or no language) and in inline code alike (an
inline span may run over several lines), and checks each one:

- a server command line is run with `--check` appended: the binary parses and validates every
  option as a start would, reads the files it names, and exits 0 without listening (status 2
  and the reason on a bad value). It must exit 0 and say so.
- a subcommand is run as written and must exit 0 and print something.

Each runs with bash in a temporary directory that holds what the docs' commands name:
`auth-secret` and `secret` (48 random bytes, base64), `api-key` (32), and `cert.pem`/`key.pem`
(a self-signed P-256 certificate made with the README's own openssl command), with `smolchat`
first on the PATH: the debug build with the features the command needs (`--tls-*`: `tls`,
`--redis*`: `redis`; `--data-dir`, `--sync-interval`: `store`; `cargo run --features F`: F). A loop variable (`for port in 8081 8082`)
takes its first value. --check never connects to Redis.

Not run: synopses (an argument with `[` or `...`, or an upper-case placeholder such as NAME) and
inline mentions without any option (`smolchat token` in a sentence); both are listed as skip.

Prints one line per command, ok / FAIL / skip with file and line, the output of failures, and
a summary; exits 1 if any command failed. --list only prints what it found. --no-build uses
the binaries already in target/debug (built before with the right features).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_LANGS = {"", "sh", "bash", "shell", "console", "zsh"}
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|.*\[.*|.*\.\.\..*)$")
# Where a command may start: the start of a line or span, after a separator, or inside $(...).
START = re.compile(r"(?:^|(?<=[\s;&|(]))(?:\./)?smolchat(?=\s|$)|(?:^|(?<=[\s;&|(]))cargo run\b")


class Command:
    def __init__(self, path, line, text, inline, env):
        self.path, self.line, self.text, self.inline, self.env = path, line, text, inline, env
        self.features = set()
        self.args = ""  # the arguments after the binary, as written
        self.kind = None  # "server", "sub", or why it is skipped
        self.parse()

    def parse(self):
        text = self.text
        if text.startswith("cargo run"):
            words = shlex.split(text)
            if "--release" not in words or any(w in words for w in ("--example", "--bin")):
                self.kind = "not the server"
                return
            for i, w in enumerate(words):
                if w == "--features" and i + 1 < len(words):
                    self.features.update(words[i + 1].split(","))
            self.args = text.split(" -- ", 1)[1] if " -- " in text else ""
        else:
            self.args = text.split(None, 1)[1] if " " in text else ""
        try:
            words = shlex.split(self.args)
        except ValueError as e:
            self.kind = f"FAIL: cannot split ({e})"
            return
        if any(PLACEHOLDER.match(w) for w in words):
            self.kind = "skip: synopsis"
        elif self.inline and not any(w.startswith("-") for w in words):
            self.kind = "skip: mention"
        else:
            self.kind = "sub" if words[:1] == ["token"] else "server"
        if any(w.startswith("--tls-") for w in words):
            self.features.add("tls")
        if any(w.startswith("--redis") for w in words):
            self.features.add("redis")
        if any(w in ("--data-dir", "--sync-interval") or w.startswith("--data-dir=") for w in words):
            self.features.add("store")

    def build(self):
        return ",".join(sorted(self.features)) or "default"

    def shell(self):
        line = "smolchat " + self.args if self.args else "smolchat"
        return line + " --check" if self.kind == "server" else line


def command_end(text, start):
    """Where the command that starts at `start` ends: an unquoted ; & | ) ` or # comment."""
    quote = None
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c in ";&|)`\n":
            return i
        elif c == "#" and text[i - 1].isspace():
            return i
        i += 1
    return i


def commands_in(text, path, line, inline, env):
    for m in START.finditer(text):
        if not inline and in_comment(text, m.start()):
            continue
        found = text[m.start() : command_end(text, m.start())].strip()
        found = re.sub(r"\s+", " ", found)
        if found.startswith("./"):
            found = found[2:]
        yield Command(path, line, found, inline, env)


def in_comment(text, pos):
    """True if `pos` is in a shell comment (an unquoted # after whitespace, before it)."""
    quote = None
    for i, c in enumerate(text[:pos]):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1].isspace()):
            return True
    return False


def extract(path):
    rel = path.relative_to(ROOT)
    lines = path.read_text().split("\n")
    found = []
    prose = []  # (line number, text) outside fences, for inline code
    fence = None
    block_env = {}
    i = 0
    while i < len(lines):
        raw = lines[i]
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", raw)
        if fence is None and m:
            fence, lang = m.group(1), m.group(2).lower()
            shell = lang in SHELL_LANGS
            block_env = {}
            i += 1
            continue
        if fence is not None:
            if raw.strip().startswith(fence):
                fence = None
            elif shell:
                start = i
                logical = raw
                while logical.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    logical = logical[:-1] + " " + lines[i].strip()
                loop = re.match(r"^\s*for (\w+) in (\S+)", logical)
                if loop:
                    block_env[loop.group(1)] = loop.group(2).rstrip(";")
                found += commands_in(logical, rel, start + 1, False, dict(block_env))
            i += 1
            continue
        prose.append((i + 1, raw))
        i += 1
    # Inline code: single or double backticks, a span may continue on the next lines.
    text = "\n".join(t for _, t in prose)
    starts = []
    offset = 0
    for n, t in prose:
        starts.append((offset, n))
        offset += len(t) + 1
    for m in re.finditer(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.S):
        code = " ".join(m.group(2).split())
        n = max(ln for off, ln in starts if off <= m.start())
        if START.match(code):
            found += commands_in(code, rel, n, True, {})
    return found


def build(features, no_build):
    """The debug binary with `features` ("default" or e.g. "tls"), copied out of target/."""
    bindir = Path(tempfile.mkdtemp(prefix=f"smolchat-doc-check-{features}-"))
    if not no_build:
        cmd = ["cargo", "build", "--quiet", "--bin", "smolchat"]
        if features != "default":
            cmd += ["--features", features]
        print(f"== {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    shutil.copy2(ROOT / "target" / "debug" / "smolchat", bindir / "smolchat")
    return bindir


def files(workdir):
    """The secrets and the certificate the docs' commands name."""
    for name, size in (("auth-secret", 48), ("secret", 48), ("api-key", 32)):
        data = subprocess.run(
            f"head -c {size} /dev/urandom | base64", shell=True, capture_output=True, check=True
        ).stdout
        (workdir / name).write_bytes(data)
    subprocess.run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 "
        "-subj /CN=gateway.local -addext subjectAltName=DNS:gateway.local "
        "-keyout key.pem -out cert.pem",
        shell=True, cwd=workdir, check=True, capture_output=True,
    )


def run(command, bindir, workdir):
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", **command.env)
    for var in [k for k in env if k.startswith("SMOLCHAT_")]:
        del env[var]
    try:
        out = subprocess.run(
            ["bash", "-c", "set -u\n" + command.shell()],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=30,
        )
    except subprocess.TimeoutExpired:
        return False, "did not exit within 30 s"
    output = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        return False, f"exit status {out.returncode}\n{output}"
    if command.kind == "server":
        helps = any(w in ("--help", "-h", "--version", "-V") for w in shlex.split(command.args))
        if not helps and "smolchat --check: every option is valid" not in out.stdout:
            return False, f"no --check report\n{output}"
    elif not out.stdout.strip():
        return False, "printed nothing"
    return True, output


def main():
    args = sys.argv[1:]
    docs = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    commands = [c for path in docs for c in extract(path)]
    commands = [c for c in commands if c.kind != "not the server"]
    commands.sort(key=lambda c: (str(c.path) != "README.md", str(c.path), c.line))
    if "--list" in args:
        for c in commands:
            print(f"{c.kind:<15} {c.build():<8} {c.path}:{c.line}  {c.shell()}")
        return 0
    bins = {}
    needed = {c.build() for c in commands if c.kind in ("server", "sub")}
    # The default build last, so that target/debug/smolchat is the default binary again.
    for features in sorted(needed, key=lambda f: (f == "default", f)):
        bins[features] = build(features, "--no-build" in args)
    workdir = Path(tempfile.mkdtemp(prefix="smolchat-doc-check-"))
    files(workdir)
    failed = ok = skipped = 0
    for c in commands:
        where = f"{c.path}:{c.line}"
        if c.kind.startswith("skip"):
            skipped += 1
            print(f"skip  {where}  {c.text}  ({c.kind[6:]})")
            continue
        if c.kind.startswith("FAIL"):
            good, output = False, c.kind
        else:
            good, output = run(c, bins[c.build()], workdir)
        label = c.shell() + (f"   [features: {c.build()}]" if c.features else "")
        print(f"{'ok  ' if good else 'FAIL'}  {where}  {label}", flush=True)
        if good:
            ok += 1
        else:
            failed += 1
            print("      " + output.replace("\n", "\n      "))
    shutil.rmtree(workdir)
    for bindir in bins.values():
        shutil.rmtree(bindir)
    print(f"\n{ok + failed} commands checked: {ok} ok, {failed} failed; {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
