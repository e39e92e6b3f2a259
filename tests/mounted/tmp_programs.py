"""Real programs that live in /tmp, run against whatever is mounted on /tmp.

Run by tests/mounted/test_tmp_programs.py inside a private mount namespace,
once with a tmpfs and once with cctmpfs on /tmp. Prints one JSON object of
results that must be equal for both (no timings, no inode numbers, no random
names), and exits non-zero only if this script itself breaks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import zipfile

TMP = "/tmp"
ENV = dict(os.environ, TMPDIR=TMP, LC_ALL="C")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", ENV), timeout=300,
                          **kw)


def digest_tree(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            h.update(os.path.relpath(p, root).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def gcc() -> dict:
    d = tempfile.mkdtemp(prefix="gcc.")
    with open(os.path.join(d, "hello.c"), "w") as f:
        f.write('#include <stdio.h>\nstatic int sq(int x) { return x * x; }\n'
                'int main(void) { printf("hello %d\\n", sq(6) + 6); return 0; }\n')
    with open(os.path.join(d, "lib.c"), "w") as f:
        f.write("int twice(int x) { return 2 * x; }\n")
    # Separate compile and link steps: the assembler and linker write their
    # temporaries to TMPDIR (/tmp), and the object files live there too.
    steps = [["gcc", "-O1", "-c", "-o", f"{d}/hello.o", f"{d}/hello.c"],
             ["gcc", "-O1", "-c", "-o", f"{d}/lib.o", f"{d}/lib.c"],
             ["gcc", "-o", f"{d}/hello", f"{d}/hello.o", f"{d}/lib.o"]]
    rcs = [run(s).returncode for s in steps]
    out = run([f"{d}/hello"]).stdout
    shutil.rmtree(d)
    return {"rcs": rcs, "out": out}


def pip_wheel() -> dict:
    src = os.path.join(TMP, "cct_probe_pkg")
    os.makedirs(os.path.join(src, "cct_probe"))
    with open(os.path.join(src, "pyproject.toml"), "w") as f:
        f.write('[build-system]\nrequires = ["setuptools>=61"]\n'
                'build-backend = "setuptools.build_meta"\n\n'
                '[project]\nname = "cct_probe"\nversion = "1.0"\n')
    with open(os.path.join(src, "cct_probe", "__init__.py"), "w") as f:
        f.write("ANSWER = 42\n")
    out = os.path.join(TMP, "wheels")
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "--no-cache-dir", "-q", "-w", out, src])
    wheels = sorted(os.listdir(out)) if os.path.isdir(out) else []
    names = []
    if wheels:
        with zipfile.ZipFile(os.path.join(out, wheels[0])) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("RECORD"))
            code = z.read("cct_probe/__init__.py").decode()
    else:
        code = r.stderr[-2000:]
    shutil.rmtree(src)
    shutil.rmtree(out, ignore_errors=True)
    return {"rc": r.returncode, "wheels": wheels, "names": names, "code": code}


def git() -> dict:
    repo = os.path.join(TMP, "repo")
    env = dict(ENV, HOME=TMP, GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="A", GIT_AUTHOR_EMAIL="a@example.org",
               GIT_COMMITTER_NAME="A", GIT_COMMITTER_EMAIL="a@example.org",
               GIT_AUTHOR_DATE="2026-01-01T00:00:00Z", GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
    rcs = [run(["git", "init", "-q", "-b", "main", repo], env=env).returncode]
    for i in range(3):
        with open(os.path.join(repo, f"file{i}.txt"), "w") as f:
            f.write(f"version {i}\n" * (1000 * (i + 1)))
        rcs.append(run(["git", "-C", repo, "add", "-A"], env=env).returncode)
        rcs.append(run(["git", "-C", repo, "commit", "-q", "-m", f"commit {i}"], env=env).returncode)
    rcs.append(run(["git", "-C", repo, "gc", "-q", "--aggressive"], env=env).returncode)
    fsck = run(["git", "-C", repo, "fsck", "--full", "--strict"], env=env)
    head = run(["git", "-C", repo, "rev-parse", "HEAD"], env=env).stdout.strip()
    packs = [n for n in os.listdir(os.path.join(repo, ".git", "objects", "pack")) if n.endswith(".pack")]
    log = run(["git", "-C", repo, "log", "--format=%s"], env=env).stdout.split("\n")
    shutil.rmtree(repo)
    return {"rcs": rcs, "fsck": fsck.returncode, "head": head, "packs": len(packs), "log": log}


READER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
last, seen = -1, 0
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    n = db.execute("select count(*), coalesce(sum(v), 0) from t").fetchone()
    if n[0] < last or n[1] != n[0] * (n[0] - 1) // 2:
        print("INCONSISTENT", n, last); sys.exit(1)
    last, seen = n[0], seen + 1
    if n[0] == int(sys.argv[2]):
        break
print("ok" if last == int(sys.argv[2]) else "TIMEOUT")
"""


def sqlite_wal() -> dict:
    path = os.path.join(TMP, "wal.db")
    db = sqlite3.connect(path, timeout=30)
    mode = db.execute("pragma journal_mode=wal").fetchone()[0]
    db.execute("create table t (id integer primary key, v integer)")
    db.commit()
    total = 3000
    readers = [subprocess.Popen([sys.executable, "-c", READER, path, str(total)],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for start in range(0, total, 100):
        db.executemany("insert into t (v) values (?)", [(v,) for v in range(start, start + 100)])
        db.commit()
    wal_exists = os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
    outs = [r.communicate(timeout=120)[0].strip() for r in readers]
    count = db.execute("select count(*) from t").fetchone()[0]
    check = db.execute("pragma integrity_check").fetchone()[0]
    db.execute("pragma wal_checkpoint(truncate)")
    db.close()
    os.unlink(path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return {"mode": mode, "readers": outs, "count": count, "check": check, "wal": wal_exists}


def tar() -> dict:
    std = sysconfig.get_paths()["stdlib"]
    src = os.path.join(TMP, "src")
    for pkg in ("json", "email", "http"):
        shutil.copytree(os.path.join(std, pkg), os.path.join(src, pkg),
                        ignore=shutil.ignore_patterns("__pycache__"))
    rc_c = run(["tar", "-C", TMP, "-cf", os.path.join(TMP, "src.tar"), "src"]).returncode
    dst = os.path.join(TMP, "dst")
    os.mkdir(dst)
    rc_x = run(["tar", "-C", dst, "-xf", os.path.join(TMP, "src.tar")]).returncode
    listing = sorted(run(["tar", "-tf", os.path.join(TMP, "src.tar")]).stdout.split())
    same = digest_tree(src) == digest_tree(os.path.join(dst, "src"))
    out = {"rc": [rc_c, rc_x], "same": same, "digest": digest_tree(dst), "entries": len(listing)}
    shutil.rmtree(src)
    shutil.rmtree(dst)
    os.unlink(os.path.join(TMP, "src.tar"))
    return out


def fifo() -> dict:
    path = os.path.join(TMP, "fifo")
    os.mkfifo(path, 0o600)
    data = hashlib.sha256(b"seed").digest() * (1 << 15)   # 1 MiB
    # The writer makes the same bytes itself: it blocks in open() until this
    # process opens the FIFO for reading.
    writer = subprocess.Popen([sys.executable, "-c",
                               "import hashlib, sys; open(sys.argv[1], 'wb').write("
                               "hashlib.sha256(b'seed').digest() * (1 << 15))", path])
    with open(path, "rb") as f:
        got = f.read()
    rc = writer.wait(timeout=60)
    is_fifo = stat.S_ISFIFO(os.lstat(path).st_mode)
    os.unlink(path)
    return {"rc": rc, "fifo": is_fifo, "same": got == data, "bytes": len(got)}


def unix_socket() -> dict:
    path = os.path.join(TMP, "echo.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    is_sock = stat.S_ISSOCK(os.lstat(path).st_mode)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk[::-1])

    t = threading.Thread(target=serve)
    t.start()
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli.connect(path)
    replies = []
    for msg in (b"hello", b"x" * 50_000, b"bye"):
        cli.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += cli.recv(65536)
        replies.append(got == msg[::-1])
    cli.close()
    t.join(timeout=30)
    srv.close()
    os.unlink(path)
    return {"socket": is_sock, "replies": replies}


def tempfile_api() -> dict:
    out: dict = {"gettempdir": tempfile.gettempdir()}
    fd, path = tempfile.mkstemp(suffix=".x")
    os.write(fd, b"data")
    os.close(fd)
    out["mkstemp_mode"] = oct(os.stat(path).st_mode & 0o777)
    out["mkstemp_in_tmp"] = os.path.dirname(path) == TMP
    os.unlink(path)
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"x" * 10_000)
        f.flush()
        name = f.name
        out["named_size"] = os.path.getsize(name)
    out["named_gone"] = not os.path.exists(name)
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "a", "b"))
        for i in range(20):
            with open(os.path.join(d, "a", "b", f"f{i}"), "w") as f:
                f.write("y" * i)
        os.symlink("a/b/f3", os.path.join(d, "link"))
        out["tmpdir_files"] = len(os.listdir(os.path.join(d, "a", "b")))
    out["tmpdir_gone"] = not os.path.exists(d)
    with tempfile.SpooledTemporaryFile(max_size=10) as f:
        f.write(b"z" * 1000)
        f.seek(0)
        out["spooled"] = len(f.read())
    return out


CHECKS = {"gcc": gcc, "pip_wheel": pip_wheel, "git": git, "sqlite_wal": sqlite_wal, "tar": tar,
          "fifo": fifo, "unix_socket": unix_socket, "tempfile": tempfile_api}


def main() -> int:
    results = {}
    for name, fn in CHECKS.items():
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 - reported in the results, compared by the test
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
