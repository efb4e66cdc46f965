"""A small local HTTP server for download tests (no pytest dependency).

It serves files from an in-memory dict ``{path: bytes}`` on 127.0.0.1 (port 0,
one thread per request), records every request, and can misbehave on purpose,
path by path:

    with FileServer() as srv:
        srv.add("/v1/tool.tar.gz", data)                  # 200, Content-Length
        srv.add("/gone", b"", status=404)                 # always this status
        srv.add("/flaky", data, fail=2)                   # 500 twice, then 200
        srv.add("/cut", data, truncate=True)              # Content-Length too large, then close
        srv.add("/cut-once", data, truncate=1, ranges=True)   # once, then resumable (206)
        srv.add("/slow", data, stall=5)                   # headers, then silence
        srv.add("/moved", b"", redirect="/v1/tool.tar.gz")
        srv.add("/drip", data, trickle=0.5)               # one byte every 0.5 s
        srv.add("/endless", data, endless=True)           # data, over and over, never ending
        url = srv.url + "/v1/tool.tar.gz"
        srv.requests_for("/flaky")                        # -> [Request, ...]

It is also a forward HTTP proxy for tests: a request line with an absolute URI
(``GET http://example.invalid/x HTTP/1.1``) is answered from the same dict by
its path, and the request is recorded with ``proxied=True``.
"""
import http.server
import threading
import time
import urllib.parse

__all__ = ["FileServer", "Request", "Route", "tar_bytes", "tar_info", "zip_bytes"]


class Request(object):
    """One request as the server saw it."""

    def __init__(self, method, target, path, headers, proxied):
        self.method = method
        self.target = target        # the request-target exactly as sent
        self.path = path            # its path part (what the dict is keyed by)
        self.headers = headers      # {lower-case name: value}
        self.proxied = proxied      # True when the target was an absolute URI
        self.time = time.monotonic()

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def __repr__(self):
        return "<Request %s %s%s range=%r>" % (self.method, self.target, " (proxied)" if self.proxied else "",
                                               self.header("range"))


class Route(object):
    """How one path answers.  Counters (``fail``, ``truncate``, ``stall_times``)
    count down per request; ``True`` means every request."""

    def __init__(self, body=b"", status=200, fail=0, fail_status=500, truncate=0, truncate_at=None,
                 stall=0.0, stall_times=True, stall_before_headers=False, ranges=False, delay=0.0,
                 redirect=None, content_length=True, content_type="application/octet-stream",
                 trickle=0.0, endless=False):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.body = bytes(body)
        self.status = status
        self.fail = fail
        self.fail_status = fail_status
        self.truncate = truncate
        self.truncate_at = truncate_at
        self.stall = stall
        self.stall_times = stall_times
        self.stall_before_headers = stall_before_headers
        self.ranges = ranges
        self.delay = delay
        self.redirect = redirect
        self.content_length = content_length
        self.content_type = content_type
        self.trickle = trickle
        self.endless = endless


def _take(route, attr):
    """Consume one use of a countdown attribute; True if it applies now."""
    value = getattr(route, attr)
    if value is True:
        return True
    if value:
        setattr(route, attr, value - 1)
        return True
    return False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"   # one response per connection: the close ends a body
    server_version = "wetlite-test/1"

    def log_message(self, format, *args):    # keep test output quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head):
        owner = self.server.owner
        target = self.path
        proxied = "://" in target.split("?", 1)[0]
        path = urllib.parse.urlsplit(target).path if proxied else target.split("?", 1)[0]
        path = path or "/"
        headers = dict((k.lower(), v) for k, v in self.headers.items())
        owner._record(Request(self.command, target, path, headers, proxied))
        with owner._lock:
            route = owner.routes.get(path)
            if route is None:
                plan = ("status", 404)
            elif route.redirect:
                plan = ("redirect", route.redirect)
            elif route.status != 200:
                plan = ("status", route.status)
            elif _take(route, "fail"):
                plan = ("status", route.fail_status)
            else:
                plan = ("body", None)
            truncate = route is not None and plan[0] == "body" and _take(route, "truncate")
            stall = route is not None and plan[0] == "body" and route.stall and _take(route, "stall_times")
        if route is not None and route.delay:
            owner._stop.wait(route.delay)
        kind, value = plan
        if kind == "status":
            body = ("HTTP %d for %s\n" % (value, path)).encode("ascii")
            self.send_response(value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if stall and route.stall_before_headers:
            owner._stop.wait(route.stall)
            return
        body = route.body
        status = 200
        start = 0
        wanted = headers.get("range", "")
        if route.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
            try:
                start = int(wanted[len("bytes="):-1])
            except ValueError:
                start = 0
            if 0 < start < len(body):
                status = 206
            else:
                start = 0
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(body) - 1, len(body)))
        if truncate:
            # Promise the whole payload plus more, send part of it, then hang up.
            cut = route.truncate_at if route.truncate_at is not None else len(payload) // 2
            cut = max(0, min(cut, len(payload)))
            self.send_header("Content-Length", str(len(payload) + 1000))
            self.end_headers()
            if not head:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
            self.close_connection = True
            return
        if route.content_length and not route.endless:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if head:
            return
        if route.trickle or route.endless:
            self._drip(owner, route, payload)
            return
        if stall:
            # Headers out, then a little data, then silence longer than any test timeout.
            self.wfile.write(payload[:1])
            self.wfile.flush()
            owner._stop.wait(route.stall)
            return
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


    def _drip(self, owner, route, payload):
        """A body byte by byte (trickle) or repeated forever (endless), until the client hangs up."""
        try:
            while not owner._stop.is_set():
                if route.trickle:
                    for i in range(len(payload)):
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        if owner._stop.wait(route.trickle):
                            return
                else:
                    self.wfile.write(payload or b"\0" * 65536)
                if not route.endless:
                    return
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that gave up (timeout tests) is expected; stay quiet.
        pass


class FileServer(object):
    """A threaded HTTP server on 127.0.0.1 serving ``routes`` (see the module doc)."""

    def __init__(self, files=None, tls=None):
        self.tls = tls              # (certfile, keyfile): serve https
        self.routes = {}
        self.requests = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = None
        self._thread = None
        for path, body in (files or {}).items():
            self.add(path, body)

    # -- lifecycle ------------------------------------------------------------

    def start(self):
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        if self.tls is not None:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="wetlite-test-http", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()             # wakes every stalled handler
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._httpd.server_address[1]

    @property
    def url(self):
        """Base URL, no trailing slash: ``http://127.0.0.1:PORT`` (https with ``tls``)."""
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    # -- content --------------------------------------------------------------

    def add(self, path, body=b"", **behaviour):
        """Serve ``body`` at ``path`` with the given Route behaviour; returns the Route."""
        if not path.startswith("/"):
            path = "/" + path
        route = Route(body, **behaviour)
        with self._lock:
            self.routes[path] = route
        return route

    def remove(self, path):
        with self._lock:
            self.routes.pop(path, None)

    # -- what happened --------------------------------------------------------

    def _record(self, request):
        with self._lock:
            self.requests.append(request)

    def requests_for(self, path):
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def paths(self):
        with self._lock:
            return [r.path for r in self.requests]

    def clear(self):
        with self._lock:
            del self.requests[:]


# -- archives to serve ----------------------------------------------------------

def tar_bytes(members, compression="gz"):
    """A tar archive in memory.

    ``members`` is a list of ``(name, data)`` pairs (regular files, mode 0755)
    and/or ``tarfile.TarInfo`` objects (directories, links, devices, ...);
    ``compression`` is "gz", "bz2" or "" (plain tar).
    """
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + compression) as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            name, data = member
            if isinstance(data, str):
                data = data.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 1700000000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_info(name, kind, linkname="", mode=0o644):
    """A data-less TarInfo: kind is a tarfile type (SYMTYPE, LNKTYPE, CHRTYPE, DIRTYPE, ...)."""
    import tarfile
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.mtime = 1700000000
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


def zip_bytes(members):
    """A zip archive in memory from ``(name, data)`` pairs or ``(zipfile.ZipInfo, data)`` pairs."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()
