"""The Go binaries the stack builds once and caches: one table, one way to build each kind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .packages import ensure_packages, missing_packages
from .progress import StackError, fmt_secs, log, run_logged
from .settings import BIN_DIR, BUILDER_CONFIG, CACHE_DIR, SRC_DIR

__all__ = ["BUILDS", "GO_BINARIES", "GoBinary", "binary", "collector_bin", "ensure_built", "sha12"]


def sha12(*paths: str) -> str:
    """The first 12 hex digits of the SHA-256 of the files' contents."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class GoBinary:
    """One row of the build table: a Go binary, where its source comes from, how it is built."""

    name: str  # build log build-<name>.log; a service's name when `service`
    title: str  # for progress lines: "<title> <version><note>"
    module: str  # the Go module
    version: str
    package: str  # what `go build` / `go install` builds (the collector's come from builder-config.yaml)
    make: Callable[[GoBinary, str], None]  # builds the binary at the given path
    doing: str  # heartbeat line: "still <doing> (...)"
    first_build: str  # approximate first-build time, only for progress lines (docs/stack.md)
    prepare: Callable[[str], None] | None = None  # fixes up the source / work directory
    stem: str = ""  # binary name before -<version>; default `name`
    config: str | None = None  # a file whose hash goes into the binary's name (rebuilt when it changes)
    note: str = ""
    requires: tuple[str, ...] = ()  # other rows built first
    service: bool = True  # a stack service runs it

    @property
    def path(self) -> str:
        """The cached binary."""
        suffix = f"-{sha12(self.config)}" if self.config else ""
        return os.path.join(BIN_DIR, f"{self.stem or self.name}-{self.version}{suffix}")

    @property
    def label(self) -> str:
        """Name and version for progress lines."""
        return f"{self.title} {self.version}{self.note}"


def go_exe() -> str:
    """The `go` command (PATH, else /usr/local/go/bin/go)."""
    exe = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if not exe:
        raise StackError("Go is needed to build FerretDB, Jaeger and the collector (go >= 1.24): not found on PATH")
    return exe


def go_env() -> dict[str, str]:
    """The environment of Go builds."""
    env = dict(os.environ)
    # the collector builder runs `go` from PATH
    env["PATH"] = os.path.dirname(go_exe()) + os.pathsep + env.get("PATH", "")
    env.setdefault("HOME", pwd.getpwuid(os.getuid()).pw_dir)  # go needs it for GOCACHE/GOPATH
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def go_mod_dir(module: str, version: str) -> str:
    """The (read-only) directory of `module@version` in the Go module cache, downloaded if needed."""
    out = subprocess.run([go_exe(), "mod", "download", "-json", f"{module}@{version}"], env=go_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=CACHE_DIR, check=False)
    if out.returncode != 0:
        raise StackError(f"go mod download {module}@{version} failed:\n{out.stderr.decode()}{out.stdout.decode()}")
    return str(json.loads(out.stdout)["Dir"])


def writable_copy(src: str, dst: str) -> None:
    """Copy a tree (replacing `dst`) and make every file in it writable."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    for root, dirs, files in os.walk(dst):
        for n in dirs + files:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o200)


# --- how a row is built

def _build_module_copy(b: GoBinary, out: str) -> None:
    """`go build` in a writable copy of the module (for modules `go install` refuses or builds wrong)."""
    src = os.path.join(SRC_DIR, f"{b.name}-{b.version}")
    writable_copy(go_mod_dir(b.module, b.version), src)
    if b.prepare:
        b.prepare(src)
    run_logged([go_exe(), "build", "-trimpath", "-ldflags=-s -w", "-o", out + ".tmp", b.package],
               b.name, cwd=src, env=go_env(), what=b.doing)
    os.replace(out + ".tmp", out)


def _go_install(b: GoBinary, out: str) -> None:
    """`go install module/package@version` into a private GOBIN."""
    gobin = os.path.join(SRC_DIR, f"{b.name}-{b.version}-gobin")
    os.makedirs(gobin, exist_ok=True)
    run_logged([go_exe(), "install", f"{b.module}/{b.package}@{b.version}"], b.name,
               cwd=CACHE_DIR, env=dict(go_env(), GOBIN=gobin), what=b.doing)
    os.replace(os.path.join(gobin, os.path.basename(b.package)), out)


def _build_with_ocb(b: GoBinary, out: str) -> None:
    """The collector builder (ocb) on builder-config.yaml, rendered into a work directory."""
    work = os.path.join(SRC_DIR, os.path.basename(out))
    os.makedirs(work, exist_ok=True)
    if b.prepare:
        b.prepare(work)
    cfg = os.path.join(work, "builder-config.yaml")
    run_logged([BUILDS["ocb"].path, f"--config={cfg}"], b.name, cwd=work, env=go_env(), what=b.doing)
    with open(cfg) as f:
        name = next(line.split(":", 1)[1].strip() for line in f if line.strip().startswith("name:"))
    shutil.copy2(os.path.join(work, "_build", name), out + ".tmp")
    os.replace(out + ".tmp", out)


# --- source fix-ups

def _prepare_ferretdb(src: str) -> None:
    """Write build/version/{version,package}.txt.

    `go install .../cmd/ferretdb@v1.24.2` builds a binary that panics at start:
    build/version/version.txt is generated in FerretDB's repository, absent from the module.
    """
    with open(os.path.join(src, "build", "version", "version.txt"), "w") as f:
        f.write(BUILDS["ferretdb"].version + "\n")
    with open(os.path.join(src, "build", "version", "package.txt"), "w") as f:
        f.write("otel-budget-stack\n")


def _prepare_jaeger(src: str) -> None:
    """Put a file into cmd/query/app/ui/actual.

    `go install .../cmd/jaeger@v1.76.0` is refused: Jaeger's go.mod has a replace directive, so
    it is built from a writable copy. The UI assets (cmd/query/app/ui/actual) are not in the
    module; `//go:embed actual/*` needs at least one file there, and without index.html.gz
    Jaeger serves its placeholder page.
    """
    with open(os.path.join(src, "cmd", "query", "app", "ui", "actual", "README.txt"), "w") as f:
        f.write("No UI assets in this build (otel-budget stack); the API under /api works.\n")


def _render_builder_config(work: str) -> None:
    """builder-config.yaml with output_path pointing at work/_build (stdlib only: no YAML parser)."""
    with open(BUILDER_CONFIG) as f:
        lines = f.read().splitlines()
    build_dir = os.path.join(work, "_build")
    rendered = []
    for line in lines:
        if line.strip().startswith("output_path:"):
            line = line[: len(line) - len(line.lstrip())] + f"output_path: {build_dir}"
        rendered.append(line)
    with open(os.path.join(work, "builder-config.yaml"), "w") as f:
        f.write("\n".join(rendered) + "\n")


# First-build times measured on this project's machine (2 cores, cold Go module and build
# caches, other test suites running beside it); see docs/stack.md.
GO_BINARIES: tuple[GoBinary, ...] = (
    GoBinary("ferretdb", "FerretDB", "github.com/FerretDB/FerretDB", "v1.24.2", "./cmd/ferretdb",
             _build_module_copy, "building FerretDB", "~2.5-3.5 min", prepare=_prepare_ferretdb),
    GoBinary("jaeger", "Jaeger", "github.com/jaegertracing/jaeger", "v1.76.0", "./cmd/jaeger",
             _build_module_copy, "building Jaeger", "~9-10.5 min", prepare=_prepare_jaeger),
    GoBinary("ocb", "collector builder (ocb)", "go.opentelemetry.io/collector", "v0.161.0", "cmd/builder",
             _go_install, "installing the collector builder", "~1-2 min", service=False),
    GoBinary("collector", "OpenTelemetry Collector", "go.opentelemetry.io/collector", "v0.161.0", "",
             _build_with_ocb, "building the collector", "~6.5-8 min", prepare=_render_builder_config,
             stem="otelcol-budget", config=BUILDER_CONFIG, note=" from collector-config/builder-config.yaml",
             requires=("ocb",)),
)
BUILDS = {b.name: b for b in GO_BINARIES}


def binary(name: str) -> str:
    """The cached binary of build `name`."""
    return BUILDS[name].path


def collector_bin() -> str:
    """The collector built from collector-config/builder-config.yaml."""
    return BUILDS["collector"].path


def build(b: GoBinary) -> str:
    """The binary of `b`, built first (with what it requires) when it is not in the cache."""
    out = b.path
    if os.path.exists(out):
        return out
    for name in b.requires:
        build(BUILDS[name])
    t = time.monotonic()
    log(f"building {b.label} (first run only, {b.first_build} on 2 cores; about 21 min for all)...")
    b.make(b, out)
    log(f"built {b.label} in {fmt_secs(time.monotonic() - t)}")
    return out


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One installer/builder at a time per cache (several `make stack` may run at once)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".build.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another stack.py is installing/building (lock {f.name}); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_built(names: list[str]) -> None:
    """Install the packages and build the binaries the services `names` need."""
    wanted = [b for b in GO_BINARIES if b.service and b.name in names]
    if all(os.path.exists(b.path) for b in wanted) and not missing_packages(names)[0]:
        return  # fast path: nothing to do, no lock needed
    with build_lock():
        os.makedirs(BIN_DIR, exist_ok=True)
        os.makedirs(SRC_DIR, exist_ok=True)
        ensure_packages(names)
        for b in wanted:
            build(b)
