//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! It follows redirects itself (wasi:http does not), and sends a request's
//! credential headers only to the origin the request started at: a registry
//! redirecting a blob to a CDN, or a web server redirecting anywhere, never
//! receives the service's token. Every request still passes the host's
//! sandbox, which refuses origins not granted to the service.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::url::Url;
use crate::{ErrorKind, FetchError, FetchOutcome, OutputStream, ResponseInfo, etag};

/// How many redirects one request may follow.
const MAX_REDIRECTS: usize = 10;

/// The largest chunk moved per splice call (the host may grant less).
const SPLICE_CHUNK: u64 = 1 << 20;

/// An HTTP request to send with [`send`].
pub struct Request {
    /// GET or HEAD (redirects are followed only for these).
    pub method: Method,
    pub url: Url,
    /// Sent on every hop, redirects included.
    pub headers: Vec<(String, String)>,
    /// Sent only while the request stays on `url`'s origin: credentials and
    /// the service's own headers.
    pub origin_headers: Vec<(String, String)>,
    /// Sent as `If-None-Match` on every hop, as the exact bytes the server
    /// gave (see [`etag`]): set it to `bundle.etag`, not as a header.
    pub if_none_match: Option<String>,
    /// How long to wait for the response headers, if the fetcher wants to
    /// bound it (the host bounds it anyway).
    pub first_byte_timeout_ms: Option<u64>,
    /// The request body: small documents only (a token request, a form).
    pub body: Vec<u8>,
}

impl Request {
    /// A GET of `url` with no headers yet.
    pub fn get(url: Url) -> Request {
        Request::new(Method::Get, url)
    }

    /// A request with `method` to `url`, no headers and no body yet.
    pub fn new(method: Method, url: Url) -> Request {
        Request {
            method,
            url,
            headers: Vec::new(),
            origin_headers: Vec::new(),
            if_none_match: None,
            first_byte_timeout_ms: None,
            body: Vec::new(),
        }
    }

    fn describe(&self, url: &Url) -> String {
        format!("{} {url}", method_name(&self.method))
    }
}

/// A response whose body has not been read yet.
pub struct Response {
    /// The URL that answered (after redirects).
    pub url: Url,
    pub status: u16,
    headers: Vec<(String, Vec<u8>)>,
    // Declared before the response: fields drop in order, and wasi:http
    // requires a child resource to go before its parent.
    body: Option<IncomingBody>,
    _response: IncomingResponse,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The `ETag`, every byte kept (see [`etag`]): what goes back into
    /// [`Request::if_none_match`] unchanged.
    pub fn etag(&self) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| etag::from_header(v))
    }

    /// Streams the body into the host's output-stream without holding it in
    /// guest memory; returns the number of bytes moved. A body shorter than
    /// its `Content-Length` is an error.
    pub fn stream_into(mut self, sink: &OutputStream) -> Result<u64, FetchError> {
        let expected = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let stream = self.take_stream()?;
        let mut moved = 0u64;
        loop {
            match sink.blocking_splice(&stream, SPLICE_CHUNK) {
                Ok(n) => moved += n,
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(FetchError::transient(format!(
                        "GET {}: transfer failed after {moved} bytes: {}",
                        self.url,
                        e.to_debug_string()
                    )));
                }
            }
        }
        drop(stream);
        if let Some(expected) = expected
            && expected != moved
        {
            return Err(FetchError::transient(format!(
                "GET {}: body truncated: received {moved} of {expected} bytes",
                self.url
            )));
        }
        Ok(moved)
    }

    /// The outcome of a conditional GET of a bundle (`If-None-Match`): a 200
    /// streams the body into `sink` and is `fetched`; a 304 is
    /// `not-modified`, keeping `request_etag` when the server repeats none.
    /// Any other status comes back as `Err(self)`, for the fetcher to turn
    /// into an error with its service's own codes.
    pub fn into_bundle_outcome(
        self,
        sink: &OutputStream,
        request_etag: Option<String>,
        long_polling: bool,
    ) -> Result<Result<FetchOutcome, Response>, FetchError> {
        let info = ResponseInfo {
            etag: self.etag(),
            digest: None,
            media_type: self.header("content-type"),
            long_polling,
        };
        match self.status {
            200 => {
                self.stream_into(sink)?;
                Ok(Ok(FetchOutcome::Fetched(info)))
            }
            304 => Ok(Ok(FetchOutcome::NotModified(ResponseInfo {
                etag: info.etag.or(request_etag),
                ..info
            }))),
            _ => Ok(Err(self)),
        }
    }

    /// Reads up to `limit` bytes of the body into memory: for small
    /// documents (manifests, tokens, error bodies), never bundles.
    pub fn read_to_vec(mut self, limit: usize) -> Result<Vec<u8>, FetchError> {
        let stream = self.take_stream()?;
        let mut out = Vec::new();
        while out.len() < limit {
            match stream.blocking_read((limit - out.len()).min(64 * 1024) as u64) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(out),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(FetchError::transient(format!(
                        "GET {}: reading the body failed: {}",
                        self.url,
                        e.to_debug_string()
                    )));
                }
            }
        }
        Err(FetchError::protocol(format!(
            "GET {}: body larger than {limit} bytes",
            self.url
        )))
    }

    /// The start of the body as text, for an error message.
    pub fn error_text(self) -> String {
        let bytes = self.read_to_vec(4096).unwrap_or_default();
        let text: String = String::from_utf8_lossy(&bytes)
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        text.trim().to_string()
    }

    fn take_stream(&mut self) -> Result<InputStream, FetchError> {
        if self.body.is_none() {
            self.body = Some(self._response.consume().map_err(|()| {
                FetchError::protocol(format!("{}: response body already taken", self.url))
            })?);
        }
        let body = self.body.as_ref().expect("set above");
        body.stream()
            .map_err(|()| FetchError::protocol(format!("{}: response body already read", self.url)))
    }
}

/// Sends `request`, following up to ten redirects for GET and HEAD.
pub fn send(request: &Request) -> Result<Response, FetchError> {
    let origin = request.url.origin();
    let mut url = request.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let same_origin = url.origin() == origin;
        let response = send_once(request, &url, same_origin)?;
        let follow = matches!(request.method, Method::Get | Method::Head)
            && matches!(response.status, 301 | 302 | 303 | 307 | 308);
        if !follow {
            return Ok(response);
        }
        let location = response.header("location").ok_or_else(|| {
            FetchError::protocol(format!(
                "{}: redirect {} without a Location header",
                request.describe(&url),
                response.status
            ))
        })?;
        url = url.join(&location)?;
    }
    Err(FetchError::protocol(format!(
        "{}: more than {MAX_REDIRECTS} redirects",
        request.describe(&request.url)
    )))
}

fn send_once(request: &Request, url: &Url, same_origin: bool) -> Result<Response, FetchError> {
    let describe = || request.describe(url);
    let mut headers: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect();
    if same_origin {
        headers.extend(
            request
                .origin_headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec())),
        );
    }
    if let Some(tag) = &request.if_none_match {
        headers.push(("If-None-Match".to_string(), etag::to_header(tag)));
    }
    if !request.body.is_empty() {
        // A declared length: some servers do not read chunked request bodies.
        headers.push((
            "Content-Length".to_string(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    // The header's name only: values may be credentials.
    let fields = Fields::from_list(&headers).map_err(|e| {
        FetchError::invalid_config(format!("{}: a header is not allowed: {e:?}", describe()))
    })?;
    let outgoing = OutgoingRequest::new(fields);
    let scheme = if url.scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let set = outgoing.set_method(&request.method).is_ok()
        && outgoing.set_scheme(Some(&scheme)).is_ok()
        && outgoing.set_authority(Some(&url.authority)).is_ok()
        && outgoing
            .set_path_with_query(Some(&url.path_and_query))
            .is_ok();
    if !set {
        return Err(FetchError::invalid_config(format!(
            "{}: not a valid request",
            describe()
        )));
    }
    let body = outgoing
        .body()
        .map_err(|()| FetchError::protocol("request body already taken"))?;
    let options = RequestOptions::new();
    if let Some(ms) = request.first_byte_timeout_ms {
        // Refused only when the host does not support the option: the
        // host's own bound then applies.
        let _ = options.set_first_byte_timeout(Some(ms * 1_000_000));
    }
    let future = outgoing_handler::handle(outgoing, Some(options))
        .map_err(|code| error_code(&describe(), code))?;
    // The body is written after `handle`: written before, it would wait for
    // a reader once it outgrows the host's buffer.
    if !request.body.is_empty() {
        write_body(&body, &request.body).map_err(|e| {
            FetchError::transient(format!(
                "{}: sending the request body failed: {e}",
                describe()
            ))
        })?;
    }
    OutgoingBody::finish(body, None).map_err(|code| error_code(&describe(), code))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(error_code(&describe(), code)),
        Some(Err(())) | None => {
            return Err(FetchError::protocol(format!(
                "{}: response lost",
                describe()
            )));
        }
    };
    let status = response.status();
    let headers = response.headers().entries();
    Ok(Response {
        url: url.clone(),
        status,
        headers,
        body: None,
        _response: response,
    })
}

/// Writes all of `data` into an outgoing body (its stream dropped before
/// the body is finished, as wasi:http requires).
fn write_body(body: &OutgoingBody, data: &[u8]) -> Result<(), String> {
    let stream = body
        .write()
        .map_err(|()| "body stream already taken".to_string())?;
    for chunk in data.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| match e {
                StreamError::Closed => "stream closed".to_string(),
                StreamError::LastOperationFailed(e) => e.to_debug_string(),
            })?;
    }
    drop(stream);
    Ok(())
}

/// Turns a wasi:http error into a fetch error naming the request.
fn error_code(request: &str, code: ErrorCode) -> FetchError {
    let kind = match code {
        ErrorCode::HttpRequestDenied => {
            return FetchError::protocol(format!(
                "{request}: denied by polhost's sandbox (origin not granted to this service)"
            ));
        }
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            ErrorKind::InvalidConfig
        }
        ErrorCode::TlsCertificateError | ErrorCode::TlsAlertReceived(_) => ErrorKind::Protocol,
        _ => ErrorKind::Transient,
    };
    FetchError::new(kind, format!("{request}: {code:?}"))
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(m) => m,
    }
}
