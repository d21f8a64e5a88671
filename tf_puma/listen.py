"""Where a tf-puma process's TensorFlow server listens: the host its cluster spec names.

TensorFlow's gRPC server binds every interface ("0.0.0.0:PORT") whatever host the spec names,
so a party started for a local trial (`127.0.0.1:PORT`) was reachable from the whole network.
`tf-puma party` and `tf-puma run` re-execute themselves once, before TensorFlow loads, with
`_puma_bind.so` preloaded and TF_PUMA_BIND_HOST set (custom_ops/bind_host.c: wildcard binds become
that host), and check after the server started that the shim took effect. `--bind 0.0.0.0`
keeps TensorFlow's behaviour (a party behind NAT, say, whose spec address is not its own).
`tf_puma.connect` in a user's process, where TensorFlow is loaded already, patches TensorFlow's
bind calls to the shim instead (limit_in_process; `bind=` overrides the spec's client host).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import sys

BIND_HOST_ENV = "TF_PUMA_BIND_HOST"
BIND_LIBRARY_ENV = "TF_PUMA_BIND_LIBRARY"  # another build of the shim (Bazel's)
_DEFAULT_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_puma_bind.so")
WILDCARDS = ("0.0.0.0", "::", "*")


class ListenError(RuntimeError):
    """The server could not be limited to the requested host."""


def bind_library() -> str:
    return os.environ.get(BIND_LIBRARY_ENV) or _DEFAULT_LIBRARY


def host_of(address: str) -> str:
    """The IP literal to listen on for a spec address "host:port" ("[v6]:port"); host names are
    resolved (localhost -> 127.0.0.1)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ListenError(f"cannot resolve {host!r} from the cluster spec ({err}); give "
                          "--bind IP (or --bind 0.0.0.0 to listen on every interface)") from None
    addresses = [info[4][0] for info in infos]
    return next((a for a in addresses if ":" not in a), addresses[0])


def listen_only_on(host: str) -> None:
    """Re-executes this command (`python -m tf_puma.apps.cli ...`) with the bind shim preloaded
    so the TF server it starts listens on `host` only; returns at once in the re-executed
    process and for wildcard hosts. Call before TensorFlow is imported."""
    if host in WILDCARDS:
        return
    library = bind_library()
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get(BIND_HOST_ENV) == host and library in preload.split(":"):
        return
    if not os.path.exists(library):
        raise ListenError(f"the bind shim {library} is missing: build it with `make build` (or "
                          "pass --bind 0.0.0.0 to listen on every interface)")
    env = {**os.environ, BIND_HOST_ENV: host,
           "LD_PRELOAD": ":".join(p for p in (library, preload) if p)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tf_puma.apps.cli", *sys.argv[1:]], env)


def limit_in_process(host: str) -> None:
    """For a process where TensorFlow is already loaded (tf_puma.connect from a user's Python):
    points TensorFlow's own calls to bind() at the shim (custom_ops/bind_host.c,
    puma_bind_patch) so the server it starts next listens on `host` only; the process's other
    sockets keep libc's bind. check_listening after the server started proves it."""
    if host in WILDCARDS:
        return
    library = bind_library()
    if not os.path.exists(library):
        raise ListenError(f"the bind shim {library} is missing: build it with `make build` (or "
                          "connect with bind='0.0.0.0' to listen on every interface)")
    os.environ[BIND_HOST_ENV] = host
    shim = ctypes.CDLL(library)
    shim.puma_bind_patch.argtypes = [ctypes.c_char_p]
    shim.puma_bind_patch(b"tensorflow")


def check_listening(host: str) -> None:
    """After the TF server started: raises ListenError unless the shim moved its bind to `host`
    (never serve on every interface when one host was asked for)."""
    if host in WILDCARDS:
        return
    try:
        rewrites = ctypes.CDLL(bind_library()).puma_bind_rewrites()
    except (OSError, AttributeError) as err:
        raise ListenError(f"cannot read the bind shim ({err})") from None
    if rewrites < 1:
        raise ListenError(f"the TensorFlow server did not bind through the shim, so it may "
                          f"listen on every interface instead of {host}; refusing to serve "
                          "(pass --bind 0.0.0.0 to accept that)")
