"""A polhost fetcher written in Python: OPA's REST bundle protocol.

GET <url>/<resource> with the service's headers, `Authorization` from
`credentials.bearer` and `If-None-Match` with the active bundle's etag:

* 200: the body is spliced into the host's output-stream, chunk by chunk
  (the bytes never enter Python memory), and the outcome is `fetched` with
  the response's ETag;
* 304: `not-modified`, with the response's ETag or else the request's;
* 401/403: unauthorized; 404/410: not-found; 408/429/5xx: transient;
  anything else (redirects included: this example follows none): protocol.

Built with componentize-py against polhost's WIT (see build.sh). The
`wit_world` and `componentize_py_types` modules are generated at build time.
"""

import json
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, outgoing_handler, streams
from wit_world.imports import wasi_http_types as http
from wit_world.imports.polhost_fetcher_types import (
    ErrorKind,
    FetchError,
    FetchOutcome_Fetched,
    FetchOutcome_NotModified,
    ResponseInfo,
)

USER_AGENT = "polhost-example-fetcher-python/0.1"

# The most bytes one splice may move; the host grants at most what its
# stream accepts (backpressure), so a call may move fewer.
SPLICE_CHUNK = 1 << 20

# How much of an error response's body is read to quote it in the message.
ERROR_BODY_LIMIT = 4096

# OPA's media type for a server answering a long-polling request.
LONG_POLLING_MEDIA_TYPE = "application/vnd.openpolicyagent.bundles"

# `response_header_timeout_seconds`' default, as OPA's.
DEFAULT_HEADER_TIMEOUT_S = 10

SUPPORTED_CREDENTIALS = ("bearer",)


class Failure(Exception):
    """A fetch error on its way out of `fetch`."""

    def __init__(self, kind, message, status=None):
        super().__init__(message)
        self.error = FetchError(kind=kind, message=message, http_status=status)


def kind_of_status(status):
    if status in (401, 403):
        return ErrorKind.UNAUTHORIZED
    if status in (404, 410):
        return ErrorKind.NOT_FOUND
    if status in (408, 429) or 500 <= status <= 599:
        return ErrorKind.TRANSIENT
    return ErrorKind.PROTOCOL


class Target:
    """Where the GET goes: <service url>/<resource>."""

    def __init__(self, service_url, resource):
        text = service_url.rstrip("/") + "/" + resource.lstrip("/")
        parts = urlsplit(text)
        if "@" in parts.netloc:
            # Not quoted: the user-info is a credential.
            raise Failure(
                ErrorKind.INVALID_CONFIG,
                "the service URL must not carry credentials (use credentials.bearer)",
            )
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Failure(
                ErrorKind.INVALID_CONFIG,
                f"{shown(text)}: not an http(s) URL",
            )
        self.scheme = parts.scheme
        self.authority = parts.netloc
        self.path_and_query = (parts.path or "/") + (
            "?" + parts.query if parts.query else ""
        )
        self.shown = shown(text)


def shown(url):
    """A URL for messages: without its query, which may carry a secret."""
    path, sep, _ = url.partition("?")
    return path + ("?…" if sep else "")


class Config:
    """The parts of the service's configuration this fetcher reads."""

    def __init__(self, service):
        self.name = service.name
        try:
            self.tree = json.loads(service.config or "{}")
        except ValueError as e:
            raise Failure(
                ErrorKind.INVALID_CONFIG,
                f"services.{self.name}: configuration is not JSON ({e.msg})",
            ) from None
        if not isinstance(self.tree, dict):
            raise Failure(
                ErrorKind.INVALID_CONFIG,
                f"services.{self.name}: configuration is not an object",
            )

    def field(self, path, kind):
        node = self.tree
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        if node is not None and not isinstance(node, kind):
            # The value is not quoted: it may be a secret.
            raise Failure(
                ErrorKind.INVALID_CONFIG,
                f"services.{self.name}.{path}: must be a {kind.__name__}",
            )
        return node

    def authorization(self):
        """`scheme token` from credentials.bearer (OPA: token or token_path,
        scheme default Bearer); None without credentials."""
        credentials = self.field("credentials", dict) or {}
        for method in credentials:
            if method not in SUPPORTED_CREDENTIALS:
                raise Failure(
                    ErrorKind.INVALID_CONFIG,
                    f"services.{self.name}.credentials.{method}: not supported by "
                    "the python fetcher (it supports credentials.bearer)",
                )
        if "bearer" not in credentials:
            return None
        token = self.field("credentials.bearer.token", str)
        if token is None:
            path = self.field("credentials.bearer.token_path", str)
            if path is None:
                raise Failure(
                    ErrorKind.INVALID_CONFIG,
                    f"services.{self.name}.credentials.bearer: needs token or token_path",
                )
            try:
                token = bytes(host.read_granted_file(path)).decode("utf-8").strip()
            except Err as e:
                raise Failure(
                    ErrorKind.INVALID_CONFIG,
                    f"services.{self.name}.credentials.bearer.token_path: {e.value}",
                ) from None
            except UnicodeDecodeError:
                raise Failure(
                    ErrorKind.INVALID_CONFIG,
                    f"services.{self.name}.credentials.bearer.token_path: file is not UTF-8 text",
                ) from None
        scheme = self.field("credentials.bearer.scheme", str) or "Bearer"
        return f"{scheme} {token}"


def error_code_name(code):
    """`HttpRequestDenied` for `ErrorCode_HttpRequestDenied()`."""
    return type(code).__name__.removeprefix("ErrorCode_")


def request_failed(what, code):
    name = error_code_name(code)
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return Failure(
            ErrorKind.PROTOCOL,
            f"{what}: denied by polhost's sandbox (origin not granted to this service)",
        )
    if isinstance(
        code, (http.ErrorCode_HttpRequestUriInvalid, http.ErrorCode_HttpRequestMethodInvalid)
    ):
        return Failure(ErrorKind.INVALID_CONFIG, f"{what}: {name}")
    if isinstance(code, (http.ErrorCode_TlsCertificateError, http.ErrorCode_TlsAlertReceived)):
        return Failure(ErrorKind.PROTOCOL, f"{what}: {name}")
    return Failure(ErrorKind.TRANSIENT, f"{what}: {name}")


def stream_error_text(error):
    if isinstance(error, streams.StreamError_LastOperationFailed):
        with error.value as e:
            return e.to_debug_string()
    return "stream closed"


def header(entries, name):
    """The first value of header `name` (case-insensitive), as text."""
    for key, value in entries:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def send(target, headers, first_byte_timeout_s):
    """Sends the GET; returns the incoming response (its body unread)."""
    what = f"GET {target.shown}"
    try:
        fields = http.Fields.from_list([(n, v.encode("latin-1")) for n, v in headers])
    except (Err, UnicodeEncodeError):
        # The header's name only: a value may be a credential.
        bad = [n for n, v in headers if not valid_header_value(v)]
        raise Failure(
            ErrorKind.INVALID_CONFIG,
            f"{what}: a header is not allowed: {', '.join(bad) or 'invalid name'}",
        ) from None
    request = http.OutgoingRequest(fields)
    try:
        request.set_method(http.Method_Get())
        request.set_scheme(http.Scheme_Https() if target.scheme == "https" else http.Scheme_Http())
        request.set_authority(target.authority)
        request.set_path_with_query(target.path_and_query)
    except Err:
        raise Failure(ErrorKind.INVALID_CONFIG, f"{what}: not a valid request") from None
    outgoing_body = request.body()
    options = http.RequestOptions()
    try:
        options.set_first_byte_timeout(first_byte_timeout_s * 1_000_000_000)
    except Err:
        pass  # unsupported by the host: its own bound applies
    try:
        future = outgoing_handler.handle(request, options)
    except Err as e:
        raise request_failed(what, e.value) from None
    try:
        http.OutgoingBody.finish(outgoing_body, None)  # a GET: no body
    except Err as e:
        raise request_failed(what, e.value) from None
    with future:
        with future.subscribe() as ready:
            ready.block()
        got = future.get()
    if got is None or isinstance(got, Err):
        raise Failure(ErrorKind.PROTOCOL, f"{what}: response lost")
    inner = got.value
    if isinstance(inner, Err):
        raise request_failed(what, inner.value)
    return inner.value


def valid_header_value(value):
    return all(c == "\t" or " " <= c <= "~" or "\x80" <= c <= "\xff" for c in value)


def splice_body(response, sink, what, expected):
    """Moves the response body into the host's stream; returns the count."""
    moved = 0
    with response.consume() as incoming:
        with incoming.stream() as source:
            while True:
                try:
                    moved += sink.blocking_splice(source, SPLICE_CHUNK)
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    raise Failure(
                        ErrorKind.TRANSIENT,
                        f"{what}: transfer failed after {moved} bytes: "
                        f"{stream_error_text(e.value)}",
                    ) from None
    try:
        sink.blocking_flush()
    except Err as e:
        raise Failure(
            ErrorKind.TRANSIENT,
            f"{what}: transfer failed after {moved} bytes: {stream_error_text(e.value)}",
        ) from None
    if expected is not None and expected != moved:
        raise Failure(
            ErrorKind.TRANSIENT,
            f"{what}: body truncated: received {moved} of {expected} bytes",
        )
    return moved


def error_text(response):
    """The start of an error response's body, printable, for a message."""
    data = bytearray()
    try:
        with response.consume() as incoming:
            with incoming.stream() as source:
                while len(data) < ERROR_BODY_LIMIT:
                    try:
                        data += source.blocking_read(ERROR_BODY_LIMIT - len(data))
                    except Err:
                        break
    except Err:
        return ""
    text = "".join(c for c in data.decode("utf-8", "replace") if c.isprintable())
    return text[:300].strip()


def fetch_bundle(service, bundle, sink):
    config = Config(service)
    target = Target(service.url, bundle.resource)
    what = f"GET {target.shown}"
    headers = [("User-Agent", USER_AGENT)]
    headers.extend(service.headers)
    authorization = config.authorization()
    if authorization is not None:
        headers.append(("Authorization", authorization))
    if bundle.etag is not None:
        headers.append(("If-None-Match", bundle.etag))
    timeout_s = config.field("response_header_timeout_seconds", int) or DEFAULT_HEADER_TIMEOUT_S
    wait = bundle.long_polling_timeout_seconds
    if wait is not None:
        headers.append(("Prefer", f"modes=snapshot;wait={wait}"))
        timeout_s += wait
    host.log(
        host.LogLevel.DEBUG,
        f"python fetcher: {what} (if-none-match: {'yes' if bundle.etag else 'no'}, "
        f"credentials: {'bearer' if authorization else 'none'})",
    )

    with send(target, headers, timeout_s) as response:
        status = response.status()
        with response.headers() as fields:
            entries = fields.entries()
        media_type = header(entries, "content-type")
        info = ResponseInfo(
            etag=header(entries, "etag"),
            digest=None,
            media_type=media_type,
            long_polling=wait is not None and media_type == LONG_POLLING_MEDIA_TYPE,
        )
        if status == 200:
            length = header(entries, "content-length")
            expected = int(length) if length and length.strip().isdigit() else None
            moved = splice_body(response, sink, what, expected)
            host.log(host.LogLevel.DEBUG, f"python fetcher: {what}: 200, {moved} bytes streamed")
            return FetchOutcome_Fetched(info)
        if status == 304:
            if info.etag is None:
                info.etag = bundle.etag
            host.log(host.LogLevel.DEBUG, f"python fetcher: {what}: 304 not modified")
            return FetchOutcome_NotModified(info)
        text = error_text(response)
        detail = f": {text}" if text else ""
        raise Failure(
            kind_of_status(status),
            f"{what}: server answered {status}{detail}",
            status,
        )


class Fetch(exports.Fetch):
    def fetch(self, service, bundle, body):
        try:
            return fetch_bundle(service, bundle, body)
        except Failure as failure:
            raise Err(failure.error) from None
        except Exception as e:  # a bug here: say where, not what (no secret)
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            line = tb.tb_lineno if tb is not None else 0
            raise Err(
                FetchError(
                    kind=ErrorKind.PROTOCOL,
                    message=f"python fetcher failed: {type(e).__name__} at line {line}",
                    http_status=None,
                )
            ) from None
