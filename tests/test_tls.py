"""Mutual TLS between the tasks (tf_puma/tunnels.py, tf_puma/certs.py), on three hosts.

The parties run in network namespaces (tf_puma/apps/netns.py), each with its own loopback and IP
on a bridge, as on three machines; this process (the root namespace) is the client's host. Each
refusal test has its positive control beside it (the same request with the right certificate
goes through), so a refusal cannot pass because the port is simply dead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_puma import certs, tunnels
from tf_puma.apps import netns
from tf_puma.cluster import EXIT_WITH_PARENT_ENV, Cluster, free_port
from tests.conftest import error_lines

PORTS = {"client": 2220, "party0": 2221, "party1": 2222, "party2": 2223}


def _unavailable() -> str | None:
    if not any(shutil.which(n) for n in tunnels.STUNNEL_NAMES):
        return "stunnel is not installed (make setup installs stunnel4 where apt-get works)"
    return netns.available()


README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
README_SECTION = "## Three hosts that do not trust the network"


def readme_commands() -> list[str]:
    """The `tf-puma ...` lines of the README's TLS section, comments dropped."""
    import re  # noqa: PLC0415

    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    section = text[text.index(README_SECTION):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    return [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()
            if line.startswith("tf-puma ")]


def cli(command: str) -> list[str]:
    """A README command line as this interpreter runs it (`tf-puma` is the CLI's entry point)."""
    import shlex  # noqa: PLC0415

    words = shlex.split(command)
    assert words[0] == "tf-puma"
    return [sys.executable, "-m", "tf_puma.apps.cli", *words[1:]]


class Deployment:
    """The README's TLS deployment, command for command: `certs` and `convert` in a work
    directory, each party host's directory holding what the README says to copy there
    (cluster.json, partyI/, tls/partyI/), and the client's (cluster.json, model-secure/ without
    shares/, tls/client/). The spec's addresses are the namespaces' instead of 10.0.0.x."""

    def __init__(self, root: str, hosts: netns.NamespaceHosts):
        self.root, self.hosts = root, hosts
        self.commands = readme_commands()
        self.spec = {"client": [f"{hosts.gateway}:{PORTS['client']}"],
                     "puma": [f"{hosts.address(f'party{i}')}:{PORTS[f'party{i}']}"
                              for i in range(3)]}
        self.spec_path = os.path.join(root, "cluster.json")
        with open(self.spec_path, "w", encoding="utf-8") as fh:
            json.dump(self.spec, fh)
        for command in self.commands:
            if command.startswith(("tf-puma certs", "tf-puma convert")):
                done = subprocess.run(cli(command), cwd=root, capture_output=True, text=True,
                                      timeout=120)
                assert done.returncode == 0, (command, done.stderr[-3000:])
        self.tls = os.path.join(root, "tls")
        self.model = os.path.join(root, "client", "model-secure")
        shutil.copytree(os.path.join(root, "model-secure"), self.model,
                        ignore=shutil.ignore_patterns("shares"))
        for task in ("client", "party0", "party1", "party2"):
            host = os.path.join(root, task)
            shutil.copytree(os.path.join(self.tls, task), os.path.join(host, "tls", task))
            shutil.copy(self.spec_path, host)
            if task != "client":
                shutil.copytree(os.path.join(root, "model-secure", "shares", task),
                                os.path.join(host, task))
        self.parties: list[subprocess.Popen] = []

    def command(self, prefix: str) -> list[str]:
        """The README's command line starting with `prefix`, as argv."""
        matches = [c for c in self.commands if c.startswith(prefix)]
        assert len(matches) == 1, (prefix, self.commands)
        return cli(matches[0])

    def tls_dir(self, task: str) -> str:
        return os.path.join(self.tls, task)

    def public(self, task: str) -> tuple[str, int]:
        host, port = tunnels.public_address(Cluster.from_spec(self.spec), task).rsplit(":", 1)
        return host, int(port)

    def start_parties(self) -> None:
        for i in range(3):
            log = open(os.path.join(self.root, f"party{i}.log"), "w")
            self.parties.append(subprocess.Popen(
                self.hosts.command(f"party{i}", self.command(f"tf-puma party --cluster "
                                                             f"cluster.json --task {i} ")),
                cwd=os.path.join(self.root, f"party{i}"),
                env={**os.environ, EXIT_WITH_PARENT_ENV: str(os.getpid())},
                stdout=subprocess.PIPE, stderr=log, text=True))
            log.close()
        for i, proc in enumerate(self.parties):
            line = proc.stdout.readline()
            assert line.startswith("tf-puma party ready"), (
                f"party {i} did not start: {line!r}\n{self.party_log(i)[-3000:]}")

    def party_log(self, i: int) -> str:
        with open(os.path.join(self.root, f"party{i}.log"), encoding="utf-8") as fh:
            return fh.read()

    def stop(self) -> None:
        for proc in self.parties:
            proc.terminate()
        for proc in self.parties:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


W = np.arange(12, dtype=np.float32).reshape(4, 3) / 16 - 0.25  # the model's weight


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    reason = _unavailable()
    if reason:
        pytest.skip(f"three hosts with TLS tunnels cannot be made here: {reason}")
    root = str(tmp_path_factory.mktemp("tls"))
    module = tf.Module()
    module.w = tf.Variable(W)
    fn = tf.function(lambda x: {"y": x @ module.w},
                     input_signature=[tf.TensorSpec([2, 4], tf.float32, name="x")])
    tf.saved_model.save(module, os.path.join(root, "model-plain"),
                        signatures={"serving_default": fn})
    with netns.NamespaceHosts(["party0", "party1", "party2"]) as hosts:
        dep = Deployment(root, hosts)
        try:
            dep.start_parties()
            yield dep
        finally:
            dep.stop()


def _script(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def _get_status(target: str, credentials=None, name: str | None = None,
                timeout: float = 5.0) -> str:
    """TensorFlow's WorkerService.GetStatus at `target` (plain gRPC, or TLS with `credentials`
    and the certificate name `name`): "ok" or the gRPC error's code name."""
    import grpc  # noqa: PLC0415

    options = [("grpc.ssl_target_name_override", name)] if name else []
    channel = (grpc.secure_channel(target, credentials, options) if credentials
               else grpc.insecure_channel(target))
    with channel:
        call = channel.unary_unary("/tensorflow.WorkerService/GetStatus",
                                   request_serializer=lambda _: b"",
                                   response_deserializer=lambda raw: raw)
        try:
            call(None, timeout=timeout)
            return "ok"
        except grpc.RpcError as err:
            return err.code().name


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _h2_answer(address: tuple[str, int], tls_dir: str | None, ca_file: str,
               timeout: float = 5.0) -> str:
    """Opens a TLS connection to `address` with `tls_dir`'s certificate (None: plain TCP),
    trusting `ca_file` for the server's certificate (named tf-puma-party0), sends HTTP/2's
    preface and a SETTINGS frame (what a gRPC client sends first), and tells what came back:
    "http2" (a SETTINGS frame: TensorFlow's gRPC server answered), "closed" (no frame: EOF,
    reset or a TLS alert) or "timeout" (the peer kept the connection open without answering)."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        if tls_dir is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(ca_file)
            context.load_cert_chain(os.path.join(tls_dir, certs.CERT_FILE),
                                    os.path.join(tls_dir, certs.KEY_FILE))
            sock = context.wrap_socket(sock, server_hostname="tf-puma-party0")
        sock.sendall(H2_PREFACE)
        reply = b""
        while len(reply) < 9:
            chunk = sock.recv(9 - len(reply))
            if not chunk:
                return "closed"
            reply += chunk
        return "http2" if reply[3] == 0x04 else f"other {reply!r}"
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return "closed"
    except socket.timeout:
        return "timeout"
    finally:
        sock.close()


def _issue(deployment: Deployment, name: str, out: str) -> str:
    """A certificate for DNS name `name`, issued by the deployment's own CA, in `out`."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    with open(os.path.join(deployment.tls, "ca", certs.CA_FILE), "rb") as fh:
        ca_cert = x509.load_pem_x509_certificate(fh.read())
    with open(os.path.join(deployment.tls, "ca", "ca-key.pem"), "rb") as fh:
        ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    cert, key = certs.issue(ca_cert, ca_key, name)
    certs.write_tls_dir(out, ca_cert, cert, key)
    return out


def test_the_readmes_three_host_commands_answer_as_plaintext(deployment):
    """The README's `tf-puma run ... --tls-dir tls/client` in the client's directory: the
    client's tunnels, the parties' tunnels and TensorFlow on loopback give the model's answer.
    x and w are multiples of 2^-4 and 2^-4, so x @ w is exact in 18 fractional bits and the only
    error is TruncPr's (<= 1 ulp = 2^-18)."""
    x = np.array([[0.5, -1.25, 2.0, 0.0625], [-3.0, 0.75, -0.5, 1.0]], np.float32)
    client = os.path.join(deployment.root, "client")
    with open(os.path.join(client, "inputs.json"), "w", encoding="utf-8") as fh:
        json.dump({"x": x.tolist()}, fh)
    done = subprocess.run(deployment.command("tf-puma run "), cwd=client, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert error_lines(done.stderr) == []  # nor a function left on a party behind a closed tunnel
    y = np.array(json.loads(done.stdout.splitlines()[-1])["y"])
    err = float(np.abs(y - x.astype(np.float64) @ W).max())
    assert err <= 2.0 ** -18, err


def test_tf_puma_serve_reaches_its_parties_over_tls(deployment):
    """`tf-puma serve --cluster --tls-dir`: TF Serving's REST predict through the client task's
    tunnels gives the model's answer (the server's own API port is plain, as --local serves)."""
    import urllib.request  # noqa: PLC0415


    rest = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_puma.apps.cli", "serve", "--model_name", "m",
         "--model_base_path", deployment.model, "--cluster", deployment.spec_path,
         "--tls-dir", deployment.tls_dir("client"), "--port", str(free_port()),
         "--rest_api_port", str(rest), "--file_system_poll_wait_seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("tf-puma serve ready"), ready + proc.stderr.read()[-3000:]
        x = [[1.0, -0.5, 0.25, 2.0], [0.0, 3.0, -1.0, 0.5]]
        request = urllib.request.Request(
            f"http://{deployment.hosts.gateway}:{rest}/v1/models/m:predict",
            data=json.dumps({"instances": [{"x": row} for row in x]}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            y = np.array(json.loads(response.read())["predictions"])  # one output: bare rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert np.abs(y - np.array(x) @ W).max() <= 2.0 ** -18


def test_the_public_port_accepts_only_task_certificates_of_the_deployment(deployment, tmp_path):
    """Party 0's public port: with the client's or another party's certificate, HTTP/2 reaches
    TensorFlow's server behind the tunnel (the control); plain gRPC, plain TCP, a certificate
    from another CA, and certificates of the deployment's own CA for a name that is no task or
    for party 0 itself are refused at the handshake, at once (no timeout)."""
    public = deployment.public("party0")
    ca = os.path.join(deployment.tls, "ca", certs.CA_FILE)
    for peer in ("client", "party1", "party2"):
        assert _h2_answer(public, deployment.tls_dir(peer), ca) == "http2", peer
    start = time.monotonic()
    assert _get_status(f"{public[0]}:{public[1]}") == "UNAVAILABLE"  # TensorFlow's own client
    assert time.monotonic() - start < 5
    assert _h2_answer(public, None, ca) == "closed"  # plain TCP
    other_ca = str(tmp_path / "other")
    certs.make_deployment(other_ca)  # a stranger's CA issuing the same task names
    assert _h2_answer(public, os.path.join(other_ca, "client"), ca) == "closed"
    stranger = _issue(deployment, "tf-puma-outsider", str(tmp_path / "outsider"))
    assert _h2_answer(public, stranger, ca) == "closed"
    assert _h2_answer(public, deployment.tls_dir("party0"), ca) == "closed"  # not its own peer


def test_a_tunnel_refuses_a_server_with_another_tasks_certificate(deployment):
    """A client whose spec sends "party 0" traffic to party 1's public port (a party trying to
    receive what is meant for another): the tunnel to party 0 refuses party 1's certificate, so
    GetStatus fails there, while the tunnel to the real party 1 answers (control)."""
    spec = json.loads(json.dumps(deployment.spec))
    spec["puma"][0] = spec["puma"][1]  # party 0's address is party 1's port
    cluster = Cluster.from_spec(spec)
    with tunnels.Tunnels(cluster, "client", deployment.tls_dir("client")) as tunnel:
        assert _get_status(tunnels.loopback_address(cluster, "party1")) == "ok"
        assert _get_status(tunnels.loopback_address(cluster, "party0")) == "UNAVAILABLE"
        assert tunnels.recent_errors(tunnel.log()), tunnel.log()[-2000:]


CAPTURE = """
import os, select, socket, sys, time
out, stop = sys.argv[1], sys.argv[2]
socks = {}
for iface in ("lo", "eth0"):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
    s.bind((iface, 0))
    socks[s] = open(os.path.join(out, iface + ".bin"), "wb")
print("capturing", flush=True)
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    ready, _, _ = select.select(list(socks), [], [], 0.2)
    for s in ready:
        socks[s].write(s.recv(262144))
for f in socks.values():
    f.close()
"""


def test_bytes_on_a_public_link_hold_none_of_the_shares(deployment, tmp_path):
    """Packets captured on party 1's host while the client shares 256 known values: x_2 (sent by
    the client to party 1) appears in the plaintext on party 1's loopback (between TensorFlow
    and its tunnels: the capture sees shares when they are there) and nowhere on its network
    interface, where only TLS records cross."""
    stop = tmp_path / "stop"
    capture = subprocess.Popen(
        deployment.hosts.command("party1", [sys.executable, "-c", CAPTURE, str(tmp_path),
                                            str(stop)]), stdout=subprocess.PIPE, text=True)
    try:
        assert capture.stdout.readline().strip() == "capturing"
        done = _script(f"""
            import numpy as np, tensorflow as tf, tf_puma
            from tf_puma import runtime
            tf_puma.connect({deployment.spec_path!r}, tls_dir={deployment.tls_dir('client')!r})
            x = np.random.default_rng(5).normal(size=(256,))

            @tf.function
            def run(x):
                s = tf_puma.share(x)
                with tf.device(runtime.device(1)):  # x_2, as party 1 receives it
                    at_1 = tf.identity(s.pairs[1][1])
                with tf.device(runtime.CLIENT_DEVICE):
                    x2 = tf.identity(at_1)
                return tf_puma.reveal(s, dtype=tf.float64), x2

            y, x2 = run(tf.constant(x))
            assert np.abs(y.numpy() - x).max() <= 2.0 ** -18
            np.save({str(tmp_path / 'x2.npy')!r}, x2.numpy())
        """)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        stop.write_text("")
        capture.wait(timeout=30)
    shares = np.load(tmp_path / "x2.npy").astype("<i8")
    assert len(set(shares.tolist())) == 256
    lo = (tmp_path / "lo.bin").read_bytes()
    eth0 = (tmp_path / "eth0.bin").read_bytes()
    found_lo = sum(v.tobytes() in lo for v in shares)
    found_eth0 = sum(v.tobytes() in eth0 for v in shares)
    assert found_lo >= 200, (found_lo, len(lo))  # a segment boundary may split a few
    assert len(eth0) > 8 * 256 and found_eth0 == 0, (found_eth0, len(eth0))


def test_tls_mistakes_are_clear_errors_at_start(deployment, tmp_path):
    """A missing directory, another task's certificate, a key from another pair, a taken port,
    `certs` into a non-empty directory: one-line errors before anything listens."""
    def party(tls_dir: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            deployment.hosts.command("party2", [
                sys.executable, "-m", "tf_puma.apps.cli", "party", "--cluster",
                deployment.spec_path, "--task", "2", "--tls-dir", tls_dir]),
            capture_output=True, text=True, timeout=60)

    done = party(str(tmp_path / "nowhere"))
    assert done.returncode == 1 and "lacks" in done.stderr and "tf-puma certs" in done.stderr
    done = party(deployment.tls_dir("party1"))
    assert done.returncode == 1 and "needs party2's certificate" in done.stderr, done.stderr
    mixed = tmp_path / "mixed"
    shutil.copytree(deployment.tls_dir("party2"), mixed)
    shutil.copy(os.path.join(deployment.tls_dir("party1"), certs.KEY_FILE), mixed)
    done = party(str(mixed))
    assert done.returncode == 1 and "is not the key of" in done.stderr, done.stderr
    done = party(deployment.tls_dir("party2"))  # party 2 runs already: its ports are taken
    assert done.returncode == 1 and "port(s) in use" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "tf_puma.apps.cli", "certs", "--cluster",
                           deployment.spec_path, deployment.tls], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "not empty" in done.stderr, done.stderr
    assert deployment.parties[2].poll() is None  # the running party was not disturbed


def test_certs_makes_one_directory_per_task_with_private_keys(tmp_path):
    out = tmp_path / "tls"
    spec = json.dumps({"client": ["c:1"], "puma": ["a:2", "b:3", "d:4"]})
    done = subprocess.run([sys.executable, "-m", "tf_puma.apps.cli", "certs", "--cluster", spec,
                           str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "party1 at b:3" in done.stdout
    for task in certs.TASK_NAMES:
        files = certs.check_tls_dir(str(out / task), task)
        assert os.stat(files.key).st_mode & 0o077 == 0
        for other in certs.TASK_NAMES:
            if other != task:
                with pytest.raises(certs.TlsSetupError, match=f"needs {other}'s certificate"):
                    certs.check_tls_dir(str(out / task), other)
    assert os.stat(out / "ca" / "ca-key.pem").st_mode & 0o077 == 0


def test_the_loopback_plan_and_stunnel_services():
    cluster = Cluster.from_spec({"client": ["c:10"], "puma": ["a:11", "b:12", "d:13"],
                                 "loopback_base": 30000})
    assert tunnels.loopback_cluster(cluster).as_dict() == {
        "client": ["127.0.0.1:30000"],
        "puma": ["127.0.0.1:30001", "127.0.0.1:30002", "127.0.0.1:30003"]}
    files = certs.TlsFiles("ca", "cert", "key")
    config = tunnels.stunnel_config(cluster, "party1", files, "10.0.0.2", "log")
    services = config.split("\n[")[1:]
    public = services[0]
    assert "accept = 10.0.0.2:12" in public and "connect = 127.0.0.1:30002" in public
    assert sorted(line for line in public.splitlines() if line.startswith("checkHost")) == [
        "checkHost = tf-puma-client", "checkHost = tf-puma-party0", "checkHost = tf-puma-party2"]
    to_party0 = next(s for s in services if s.startswith("to-party0]"))
    assert "accept = 127.0.0.1:30001" in to_party0 and "connect = a:11" in to_party0
    assert [line for line in to_party0.splitlines() if line.startswith("checkHost")] == [
        "checkHost = tf-puma-party0"]
    assert all("verifyChain = yes" in s and "requireCert = yes" in s for s in services)
    with pytest.raises(ValueError, match="loopback_base"):
        Cluster.from_spec({"client": ["c:10"], "puma": ["a:11", "b:12", "d:13"],
                           "loopback_base": 70000})


def test_a_tunnel_carries_bytes_between_ipv6_addresses(tmp_path):
    """Spec addresses in IPv6 ("[::1]:port", as TensorFlow writes them; stunnel refuses the
    brackets and takes "::1:port"): party0's tunnel to the client reaches the client's public
    port on ::1 over mutual TLS, and the client's tunnel hands the bytes to its loopback port.
    (Two tunnels on one machine: each gets a loopback plan of its own.)"""
    if not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this machine")
    spec = {"client": [f"[::1]:{free_port()}"], "puma": [f"[::1]:{free_port()}" for _ in "abc"]}
    at_client = Cluster.from_spec({**spec, "loopback_base": free_port()})
    at_party0 = Cluster.from_spec({**spec, "loopback_base": free_port()})
    config = tunnels.stunnel_config(at_party0, "party0", certs.TlsFiles("ca", "c", "k"), "::1",
                                    "log")
    assert "[::1]" not in config and f"connect = ::1:{spec['client'][0].rsplit(':', 1)[1]}" \
        in config
    certs.make_deployment(str(tmp_path))
    with tunnels.Tunnels(at_client, "client", str(tmp_path / "client"), public_bind="::1"), \
            socket.socket() as echo:  # the client task's TensorFlow server, for stunnel
        echo.bind(("127.0.0.1", at_client.loopback_base))
        echo.listen()
        with tunnels.Tunnels(at_party0, "party0", str(tmp_path / "party0"), public_bind="::1"):
            with socket.create_connection(("127.0.0.1", at_party0.loopback_base),
                                          timeout=10) as sender:
                sender.sendall(b"shares")
                echo.settimeout(10)
                received, _ = echo.accept()
                with received:
                    received.settimeout(10)
                    assert received.recv(6) == b"shares"
