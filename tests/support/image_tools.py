"""Helpers for tests/test_image.py: a Python base image made from Debian packages, the image built
from the repository's Dockerfile, and a container engine to run it.

No image registry is needed. The base for `--build-arg PYTHON_IMAGE=...` is made with debootstrap
(Debian 12 with its python3, venv and pip) and imported into podman; it is cached under
/var/tmp/webhook-app-image/ keyed by a hash of what made it, so only the first run pays for it
(about 75 s). The host's CA bundle is copied into that base, so that pip inside the build trusts
what the host trusts (a TLS-inspecting proxy's CA, say); the Dockerfile itself is unchanged and its
default stays the official python image.

Build: podman (buildah's builder, which understands `RUN --mount`), in Docker format so that the
HEALTHCHECK is kept. Run: Debian's docker.io daemon, a private one (own socket, data and exec
directories, no bridge: containers use the host's network, so everything stays on loopback),
unless DOCKER_HOST names one; podman's own runtime fails here when it sets the container's
rlimits. The image goes from podman to docker with `podman save --format docker-archive`.

A missing tool or privilege skips the tests with the reason, except under CI (the `CI` environment
variable is set), where .ci/run provides them and a missing one fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("WEBHOOK_APP_IMAGE_CACHE", "/var/tmp/webhook-app-image"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
INSTALL = {
    "podman": "apt-get install -y podman buildah",
    "docker": "apt-get install -y docker.io",
    "dockerd": "apt-get install -y docker.io",
    "debootstrap": "apt-get install -y debootstrap",
}


def missing(what: str) -> None:
    """Skip with a one-line reason; under CI the image must be built, so fail."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must provide it", pytrace=False)
    pytest.skip(what)


def need_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not path:
        missing(f"{name} is not available ({INSTALL.get(name, 'install it')})")
    assert path
    return path


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        missing(f"{what} needs root")


def run(
    args: Sequence[str],
    *,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(args), capture_output=True, text=input is None, timeout=timeout, env=env, input=input, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... exited {done.returncode}:\n{str(done.stderr)[-3000:]}")
    return done


# --- the base image --------------------------------------------------------------------------------


def base_key() -> str:
    """What the base is made from: debootstrap's version and arguments, and the host's CA bundle."""
    h = hashlib.sha256()
    version = run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], check=False).stdout
    h.update(json.dumps([SUITE, MIRROR, BASE_PACKAGES, version]).encode())
    h.update(CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b"")
    return h.hexdigest()[:16]


def base_image(podman: str) -> str:
    """A local Python base image (podman tag), made once per key and cached on disk."""
    key = base_key()
    tag = f"localhost/webhook-app-test-base:{key}"
    if run([podman, "image", "exists", tag], check=False).returncode == 0:
        return tag
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"base-{key}.tar"
    with open(CACHE / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be making the same base
        if not tarball.exists():
            debootstrap = need_tool("debootstrap")
            need_root("debootstrap")
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                rootfs = Path(tmp) / "rootfs"
                run(
                    [
                        debootstrap,
                        "--variant=minbase",
                        f"--include={','.join(BASE_PACKAGES)}",
                        SUITE,
                        str(rootfs),
                        MIRROR,
                    ],
                    timeout=900,
                )
                for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    for p in (rootfs / leftover).glob("*"):
                        if p.is_file():
                            p.unlink()
                if CA_BUNDLE.exists():
                    shutil.copy(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
                partial = Path(tmp) / "base.tar"
                run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
                partial.rename(tarball)
        if run([podman, "image", "exists", tag], check=False).returncode != 0:
            run([podman, "import", "--change", 'CMD ["python3"]', str(tarball), tag], timeout=300)
    return tag


# --- the image ----------------------------------------------------------------------------------


def build_image(podman: str, base: str, tag: str) -> float:
    """`podman build` of the repository's Dockerfile on `base`; returns the seconds it took."""
    # --no-cache: buildah 1.28 (Debian 12) cannot bind-mount a stage it took from its cache
    # ("couldn't find .../merged/wheels"), so every build is a fresh one, as on a clean CI machine.
    args = [
        podman,
        "build",
        "--no-cache",
        "--format",
        "docker",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "-t",
        tag,
        "-f",
        str(ROOT / "Dockerfile"),
    ]
    if shutil.which("runc"):
        args += ["--runtime", "runc"]  # crun refuses this machine's hybrid cgroups
    started = time.monotonic()
    try:
        run([*args, str(ROOT)], timeout=600)
    finally:
        remove_stage_images(podman, base)
    return time.monotonic() - started


def remove_stage_images(podman: str, base: str) -> None:
    """Remove the untagged images our builds left (the `build` stage: some 200 MB each), and only
    those: dangling images descending from our own base."""
    base_id = run([podman, "image", "inspect", "--format", "{{.ID}}", base]).stdout.strip()
    dangling = run([podman, "images", "-q", "--no-trunc", "--filter", "dangling=true"]).stdout.split()
    for image_id in dangling:
        seen, current = 0, image_id.removeprefix("sha256:")
        while current and current != base_id and seen < 50:
            current = (
                run([podman, "image", "inspect", "--format", "{{.Parent}}", current], check=False)
                .stdout.strip()
                .removeprefix("sha256:")
            )
            seen += 1
        if current == base_id:
            run([podman, "rmi", image_id], check=False)


# --- the engine ---------------------------------------------------------------------------------


class Docker:
    """A docker CLI bound to one daemon: DOCKER_HOST's if set, else a private dockerd we start."""

    def __init__(self) -> None:
        self.cli = need_tool("docker")
        self.env = dict(os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dirs: list[Path] = []
        if not os.environ.get("DOCKER_HOST"):
            self._start_private()

    def _start_private(self) -> None:
        dockerd = need_tool("dockerd")
        need_root("a private dockerd")
        run_dir = Path(
            tempfile.mkdtemp(prefix="webhook-app-docker-", dir="/run" if os.access("/run", os.W_OK) else None)
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        data = Path(tempfile.mkdtemp(prefix="docker-", dir=CACHE))
        self.dirs = [run_dir, data]
        sock = run_dir / "docker.sock"
        self.env["DOCKER_HOST"] = f"unix://{sock}"
        self.log = run_dir / "dockerd.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    dockerd,
                    "--host",
                    f"unix://{sock}",
                    "--data-root",
                    str(data),
                    "--exec-root",
                    str(run_dir / "exec"),
                    "--pidfile",
                    str(run_dir / "docker.pid"),
                    "--bridge",
                    "none",
                    "--iptables=false",
                    "--ip-masq=false",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while run([self.cli, "info"], check=False, env=self.env).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-1500:]
                self.close()
                raise AssertionError(f"dockerd did not start:\n{tail}")
            time.sleep(0.2)

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run([self.cli, *args], timeout=timeout, check=check, env=self.env, input=input)

    def load_from_podman(self, podman: str, tag: str) -> None:
        archive = Path(tempfile.mkdtemp(prefix="webhook-app-image-", dir=CACHE)) / "image.tar"
        try:
            run([podman, "save", "--format", "docker-archive", "-o", str(archive), tag], timeout=300)
            self("load", "-i", str(archive), timeout=300)
        finally:
            shutil.rmtree(archive.parent, ignore_errors=True)

    def inspect(self, what: str) -> dict:
        return json.loads(self("inspect", what).stdout)[0]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for d in self.dirs:
            # dockerd leaves its default network namespace mounted under the exec root
            with open("/proc/mounts") as mounts:
                inside = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{d}/")]
            for mountpoint in sorted(inside, reverse=True):
                run(["umount", "-l", mountpoint], check=False)
            shutil.rmtree(d, ignore_errors=True)


class Containers:
    """The containers and volumes one test started, removed at its end."""

    def __init__(self, docker: Docker, image: str) -> None:
        self.docker, self.image = docker, image
        self.names: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = f"webhook-app-test-{uuid.uuid4().hex[:8]}"
        self.docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def start(self, *command: str, env: dict[str, str], volume: str | None = None, options: Sequence[str] = ()) -> str:
        """`docker run -d` the image the way the deployment does: read-only root, a tmpfs /tmp,
        no capabilities, host network (loopback only), the image's own user."""
        name = f"webhook-app-test-{uuid.uuid4().hex[:8]}"
        args = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
        ]
        for key in env:
            args += ["-e", key]  # values are passed in the environment, never on the command line
        if volume:
            args += ["-v", f"{volume}:/var/lib/webhook-app"]
        full_env = {**self.docker.env, **env}
        done = run([self.docker.cli, *args, *options, self.image, *command], env=full_env, timeout=60)
        assert done.stdout.strip()
        self.names.append(name)
        return name

    def run_once(self, *command: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        args = ["run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp"]
        for key in env:
            args += ["-e", key]
        return run(
            [self.docker.cli, *args, self.image, *command], env={**self.docker.env, **env}, timeout=timeout, check=False
        )

    def logs(self, name: str) -> str:
        done = self.docker("logs", name, check=False)
        return done.stdout + done.stderr

    def close(self) -> None:
        for name in reversed(self.names):
            self.docker("rm", "-f", name, check=False, timeout=60)
        for v in self.volumes:
            self.docker("volume", "rm", "-f", v, check=False)


@contextlib.contextmanager
def containers(docker: Docker, image: str) -> Iterator[Containers]:
    c = Containers(docker, image)
    try:
        yield c
    finally:
        c.close()
