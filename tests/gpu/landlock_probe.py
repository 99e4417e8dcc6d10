"""Which paths the sandbox child's Landlock rules deny CUDA (`python -m tests.gpu.landlock_probe`).

Each round starts a fresh child with the sandbox's own environment and rules
(infra/sandbox_child.py `_restrict`, plus the extra paths found so far; GPU_READ empty,
so the rounds find which of its paths CUDA needs, and what else), imports torch and
calls torch.cuda.init(). A preloaded shim (built with the host's C compiler, where there
is one) logs every open that failed with EACCES/EPERM; those paths are allowed in the next
round, reads first and then writes, until CUDA starts or nothing new is denied. One JSON
line per round, then the verdict: the paths the production rules lack. Needs CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infra import sandbox_child
from infra.sandbox import INHERITED_ENV
from infra.sandbox_proc import library_path, link_project

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <dirent.h>
#include <limits.h>
#include <unistd.h>
static void note(int dirfd, const char *path, int err) {
    if (err != EACCES && err != EPERM) return;
    char dir[PATH_MAX] = "";
    if (dirfd != AT_FDCWD && path[0] != '/') {
        char link[64]; snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, dir, sizeof dir - 1); dir[n > 0 ? n : 0] = 0;
    }
    dprintf(2, "LANDLOCK-DENIED %s%s%s\n", dir, dir[0] ? "/" : "", path);
}
#define MODE va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap);
#define DONE(d, p) if (r < 0) { int e = errno; note(d, p, e); errno = e; } return r;
#define REAL(name, ...) static int (*real)(__VA_ARGS__); \
    if (!real) real = dlsym(RTLD_NEXT, name);
int open(const char *p, int flags, ...) {
    MODE REAL("open", const char *, int, mode_t) int r = real(p, flags, mode); DONE(AT_FDCWD, p) }
int open64(const char *p, int flags, ...) {
    MODE REAL("open64", const char *, int, mode_t) int r = real(p, flags, mode); DONE(AT_FDCWD, p) }
int openat(int d, const char *p, int flags, ...) {
    MODE REAL("openat", int, const char *, int, mode_t)
    int r = real(d, p, flags, mode); DONE(d, p) }
int openat64(int d, const char *p, int flags, ...) {
    MODE REAL("openat64", int, const char *, int, mode_t)
    int r = real(d, p, flags, mode); DONE(d, p) }
FILE *fopen(const char *p, const char *m) { static FILE *(*real)(const char *, const char *);
    if (!real) real = dlsym(RTLD_NEXT, "fopen");
    FILE *f = real(p, m); if (!f) { int e = errno; note(AT_FDCWD, p, e); errno = e; } return f; }
FILE *fopen64(const char *p, const char *m) { static FILE *(*real)(const char *, const char *);
    if (!real) real = dlsym(RTLD_NEXT, "fopen64");
    FILE *f = real(p, m); if (!f) { int e = errno; note(AT_FDCWD, p, e); errno = e; } return f; }
DIR *opendir(const char *p) { static DIR *(*real)(const char *);
    if (!real) real = dlsym(RTLD_NEXT, "opendir");
    DIR *d = real(p); if (!d) { int e = errno; note(AT_FDCWD, p, e); errno = e; } return d; }
"""

CHILD = r"""
import json, sys
from pathlib import Path
from infra import sandbox_child
args = json.loads(sys.argv[1])
sandbox_child.DEVICES_RW = (*sandbox_child.DEVICES_RW, *args["write"])
sandbox_child.GPU_READ = tuple(args["gpu_read"])
abi = sandbox_child._restrict(args["setup"]) if args["landlock"] else 0
import torch
try:
    torch.cuda.init()
    answer = {"ok": True, "abi": abi, "sum": float(torch.ones(4, device="cuda").sum())}
except Exception as exc:
    answer = {"ok": False, "abi": abi, "error": str(exc)[:400]}
print("ANSWER " + json.dumps(answer), flush=True)
"""


def build_shim(workdir: Path) -> str | None:
    compiler = shutil.which("gcc") or shutil.which("cc") or "/opt/gcc/bin/gcc"
    source, shim = workdir / "shim.c", workdir / "shim.so"
    source.write_text(SHIM)
    done = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(shim), str(source), "-ldl"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return str(shim) if done.returncode == 0 else None


def attempt(workdir: Path, read: list[str], write: list[str], shim: str | None,
            landlock: bool = True, gpu_read: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """One fresh child under the sandbox's rules plus `read`/`write`; its answer and denials."""
    code_dir, code_read = link_project(Path(tempfile.mkdtemp(dir=workdir)) / ".code")
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(PATH=os.defpath, HOME=str(workdir), TMPDIR=str(workdir),
               PYTHONPATH=os.pathsep.join([str(code_dir), *library_path()]),
               PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
    if shim:
        env["LD_PRELOAD"] = shim
    setup = {"prefixes": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}),
             "code_read": [*code_read, *([shim] if shim else [])], "readable": read,
             "workdir": str(workdir)}  # fmt: skip
    args = json.dumps({"setup": setup, "write": write, "landlock": landlock,
                       "gpu_read": list(gpu_read)})  # fmt: skip
    done = subprocess.run([sys.executable, "-s", "-c", CHILD, args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    lines = (done.stdout + done.stderr).splitlines()
    answers = [json.loads(x[7:]) for x in lines if x.startswith("ANSWER ")]
    denied = sorted({x.split(" ", 1)[1] for x in lines if x.startswith("LANDLOCK-DENIED ")})
    answer = answers[0] if answers else {"ok": False, "error": "\n".join(lines[-5:])}
    return {**answer, "denied": denied, "read": read, "write": write}


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="landlock-probe-"))
    shim = build_shim(workdir)
    print(json.dumps({"shim": bool(shim), "landlock_off": attempt(workdir, [], [], shim, False)}))
    production = attempt(workdir, [], [], shim, gpu_read=sandbox_child.GPU_READ)
    print(json.dumps({"production_rules": production}), flush=True)
    read: list[str] = []
    write: list[str] = []
    for _ in range(6):
        result = attempt(workdir, read, write, shim)
        print(json.dumps(result), flush=True)
        if result["ok"]:
            print(json.dumps({"verdict": "CUDA starts", "extra_read": read, "extra_write": write}))
            return 0
        # A thread's own entry (/proc/self/task/<tid>/…) differs every run: allow them all.
        denied = sorted({"/proc/self/task" if "/task/" in p and p.startswith("/proc/") else p
                         for p in result["denied"]})  # fmt: skip
        new = [p for p in denied if p not in read + write]
        if new:
            read += new  # a read rule first; a path denied again needs writing
        else:
            again = [p for p in denied if p in read and p not in write]
            if not again:
                break
            write += again
    # No shim or no progress: the top-level directories, one at a time, for a lead.
    tops = [(top, kind) for top in ("/proc", "/sys", "/dev", "/etc", "/run", "/var", "/tmp", "/")
            for kind in ("read", "write")]  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        results = pool.map(
            lambda tk: attempt(
                workdir,
                [tk[0]] if tk[1] == "read" else [],
                [tk[0]] if tk[1] == "write" else [],
                None,
            ),
            tops,
        )
        for (top, kind), result in zip(tops, results, strict=True):
            print(json.dumps({"top": top, "kind": kind, "ok": result["ok"],
                              "error": result.get("error", "")[:200]}), flush=True)  # fmt: skip
    print(json.dumps({"verdict": "not found", "extra_read": read, "extra_write": write}))
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
