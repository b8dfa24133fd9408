//! OPA's bundle protocol as a server speaks it, whatever the bundles come
//! from: strong SHA-256 ETags, `If-None-Match`, `Prefer: wait=N` long
//! polling with OPA's content type, the streamed body, and the responses
//! built from them. `polhost serve DIR` and the agent-backed API both use
//! it, so OPA sees one behaviour.

use std::future::Future;
use std::io::{self, ErrorKind, Read};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;
use tracing::warn;

/// `Content-Type` of a plain bundle response.
pub(crate) const GZIP: &str = "application/gzip";
/// `Content-Type` that tells OPA's client the server supports long polling;
/// OPA compares it for equality, so it carries no parameters.
pub(crate) const OPA_BUNDLES: &str = "application/vnd.openpolicyagent.bundles";
/// RFC 7240 request header carrying OPA's `wait=N`.
const PREFER: &str = "prefer";
/// Longest a long poll is held, whatever `Prefer: wait=` asks for.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);
/// Size of one body frame read from the file.
pub(crate) const CHUNK: usize = 128 * 1024;

/// A strong entity tag: the SHA-256 of the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ETag(pub(crate) [u8; 32]);

impl ETag {
    /// The tag of a hex SHA-256 (as [`crate::Activation::sha256`] holds it).
    pub(crate) fn from_hex(hex: &str) -> Option<ETag> {
        let mut digest = [0; 32];
        hex::decode_to_slice(hex, &mut digest).ok()?;
        Some(ETag(digest))
    }

    pub(crate) fn header(self) -> HeaderValue {
        let quoted = format!("\"{}\"", hex::encode(self.0));
        HeaderValue::from_str(&quoted).expect("a quoted hex digest is a valid header value")
    }
}

/// What a bundle request asks for, read from its method and headers.
#[derive(Debug)]
pub(crate) struct BundleRequest {
    /// `HEAD`: headers only.
    pub(crate) head: bool,
    /// OPA's long-poll wait, capped at [`MAX_WAIT`].
    pub(crate) wait: Option<Duration>,
    pub(crate) if_none_match: IfNoneMatch,
}

impl BundleRequest {
    /// The request's view of the protocol; `None` for a method other than
    /// `GET` and `HEAD` (answer [`method_not_allowed`]).
    pub(crate) fn parse<B>(req: &Request<B>) -> Option<BundleRequest> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        Some(BundleRequest {
            head,
            wait: prefer_wait(req.headers()),
            if_none_match: IfNoneMatch::parse(req.headers()),
        })
    }

    /// A long poll answers with OPA's content type, which is what keeps
    /// OPA's client long polling.
    pub(crate) fn content_type(&self) -> &'static str {
        if self.wait.is_some() {
            OPA_BUNDLES
        } else {
            GZIP
        }
    }

    /// How long to hold the request when the client already has `current`
    /// (`None`: answer now, with 304 if it matches or 200 if not).
    pub(crate) fn hold_for(&self, current: ETag) -> Option<Duration> {
        self.wait
            .filter(|wait| !wait.is_zero() && self.if_none_match.matches(current))
    }

    /// Whether the client already has `current`.
    pub(crate) fn has(&self, current: ETag) -> bool {
        self.if_none_match.matches(current)
    }
}

/// The `wait=N` of any `Prefer` header, capped at [`MAX_WAIT`]. OPA sends
/// `modes=snapshot,delta;wait=N`, whose comma is not valid RFC 7240 list
/// syntax, so parameters are split on both `,` and `;`.
pub(crate) fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .find_map(|param| {
            let (name, value) = param.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs).min(MAX_WAIT))
        })
}

/// A parsed `If-None-Match`; tags are compared weakly (a `W/` prefix is
/// ignored), as RFC 9110 requires for this header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IfNoneMatch {
    Any,
    /// Opaque tags without quotes; empty when the header is absent.
    Tags(Vec<String>),
}

impl IfNoneMatch {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut tags = Vec::new();
        for value in headers.get_all(header::IF_NONE_MATCH) {
            let Ok(mut rest) = value.to_str() else {
                continue;
            };
            loop {
                rest = rest.trim_start_matches([' ', '\t', ',']);
                if rest.is_empty() {
                    break;
                }
                if rest.starts_with('*') {
                    return Self::Any;
                }
                let tag = rest.strip_prefix("W/").unwrap_or(rest);
                if let Some(quoted) = tag.strip_prefix('"') {
                    let Some(end) = quoted.find('"') else {
                        break; // Unterminated: ignore the rest.
                    };
                    tags.push(quoted[..end].to_owned());
                    rest = &quoted[end + 1..];
                } else {
                    // Lenient: an unquoted tag runs to the next comma.
                    let end = tag.find(',').unwrap_or(tag.len());
                    tags.push(tag[..end].trim().to_owned());
                    rest = &tag[end..];
                }
            }
        }
        Self::Tags(tags)
    }

    pub(crate) fn matches(&self, etag: ETag) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => {
                let hex = hex::encode(etag.0);
                tags.contains(&hex)
            }
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    fn hex_digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_digit(bytes.next()?)?;
            let lo = hex_digit(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The bytes of one bundle version, ready to send: its tag, its length,
/// and a reader over exactly those bytes.
pub(crate) struct Served {
    pub(crate) etag: ETag,
    pub(crate) len: u64,
    pub(crate) reader: Box<dyn Read + Send>,
    /// Names the bytes in a log line if reading fails mid-response.
    pub(crate) label: String,
}

/// `200` with the bundle (streamed; headers only for `HEAD`).
pub(crate) fn ok(served: Served, head: bool, content_type: &'static str) -> Response<Body> {
    let len = served.len;
    let etag = served.etag;
    let body = if head {
        Body::Empty
    } else {
        Body::File(FileBody::new(served))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::ETAG, etag.header());
    response
}

/// `304` for a client that has `etag`.
pub(crate) fn not_modified(etag: ETag, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.header());
    // Only long polls say this on a 304: it is what keeps OPA long polling.
    if content_type == OPA_BUNDLES {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OPA_BUNDLES));
    }
    response
}

pub(crate) fn not_found() -> Response<Body> {
    status_only(StatusCode::NOT_FOUND, "not found\n")
}

pub(crate) fn method_not_allowed() -> Response<Body> {
    let mut response = status_only(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

pub(crate) fn status_only(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::Text(Some(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response with `body` of `content_type` (JSON, Prometheus text).
pub(crate) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let body: Bytes = body.into();
    let len = body.len();
    let mut response = Response::new(Body::Text(Some(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// Response body: nothing, a short text, or a file streamed in chunks.
pub(crate) enum Body {
    Empty,
    Text(Option<Bytes>),
    File(FileBody),
}

/// Streams exactly `remaining` bytes of a reader, one blocking read per
/// chunk; a source that turns out shorter is an error (the response would
/// not match its `Content-Length`).
pub(crate) struct FileBody {
    state: ReadState,
    remaining: u64,
    label: String,
}

type Reader = Box<dyn Read + Send>;

enum ReadState {
    Idle(Option<Reader>),
    Reading(JoinHandle<(Reader, io::Result<Bytes>)>),
}

impl FileBody {
    fn new(served: Served) -> FileBody {
        FileBody {
            state: ReadState::Idle(Some(served.reader)),
            remaining: served.len,
            label: served.label,
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Bytes>>> {
        warn!(bundle = %self.label, error = %e, "reading bundle failed mid-response");
        self.remaining = 0;
        self.state = ReadState::Idle(None);
        Poll::Ready(Some(Err(e)))
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        loop {
            match &mut self.state {
                ReadState::Idle(reader) => {
                    let Some(mut reader) = reader.take() else {
                        return Poll::Ready(None);
                    };
                    let want = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
                    // Reads block (a file, positioned reads of an
                    // activation): off the async threads, as tokio::fs does.
                    self.state = ReadState::Reading(tokio::task::spawn_blocking(move || {
                        let mut buf = BytesMut::zeroed(want);
                        let read = loop {
                            match reader.read(&mut buf) {
                                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                                other => break other,
                            }
                        };
                        let chunk = read.map(|n| {
                            buf.truncate(n);
                            buf.freeze()
                        });
                        (reader, chunk)
                    }));
                }
                ReadState::Reading(task) => {
                    let joined = ready!(Pin::new(task).poll(cx));
                    let (reader, chunk) = match joined {
                        Ok(done) => done,
                        Err(e) => return self.fail(io::Error::other(e)),
                    };
                    self.state = ReadState::Idle(Some(reader));
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) => return self.fail(e),
                    };
                    if chunk.is_empty() {
                        let missing = self.remaining;
                        warn!(bundle = %self.label, missing, "bundle shrank while being sent");
                        return self.fail(io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "bundle shrank while being sent",
                        ));
                    }
                    self.remaining -= chunk.len() as u64;
                    return Poll::Ready(Some(Ok(chunk)));
                }
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            Body::File(file) => file
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Text(text) => text.is_none(),
            Body::File(file) => file.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Text(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
            Body::File(file) => SizeHint::with_exact(file.remaining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn prefer_wait_accepts_opa_forms_and_caps() {
        let wait = |value: &str| prefer_wait(&headers(PREFER, value));
        assert_eq!(
            wait("modes=snapshot;wait=10"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait("modes=snapshot,delta;wait=7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait("modes=snapshot, delta; wait = 5"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(wait("wait=\"3\""), Some(Duration::from_secs(3)));
        assert_eq!(wait("WAIT=2"), Some(Duration::from_secs(2)));
        assert_eq!(wait("modes=snapshot;wait=9999"), Some(MAX_WAIT));
        assert_eq!(wait("modes=snapshot;wait=0"), Some(Duration::ZERO));
        assert_eq!(wait("modes=snapshot"), None);
        assert_eq!(wait("modes=snapshot;wait=-1"), None);
        assert_eq!(wait("modes=snapshot;wait=soon"), None);
        assert_eq!(wait("respond-async"), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn if_none_match_parses_lists_weak_tags_and_star() {
        let parse = |value: &str| IfNoneMatch::parse(&headers("if-none-match", value));
        let tags = |t: &[&str]| IfNoneMatch::Tags(t.iter().map(|s| s.to_string()).collect());
        assert_eq!(parse("\"ab\""), tags(&["ab"]));
        assert_eq!(parse("W/\"ab\", \"c,d\" ,\"\""), tags(&["ab", "c,d", ""]));
        assert_eq!(parse("bare, \"q\""), tags(&["bare", "q"]));
        assert_eq!(parse("\"ab\", \"unterminated"), tags(&["ab"]));
        assert_eq!(parse("*"), IfNoneMatch::Any);
        assert_eq!(IfNoneMatch::parse(&HeaderMap::new()), tags(&[]));

        let etag = ETag([0xab; 32]);
        assert!(parse(&format!("W/\"{}\"", hex::encode([0xab; 32]))).matches(etag));
        assert!(!parse("\"ab\"").matches(etag));
        assert!(!IfNoneMatch::parse(&HeaderMap::new()).matches(etag));
    }

    #[test]
    fn etag_from_hex_round_trips_and_refuses_other_text() {
        let hex = hex::encode([7u8; 32]);
        let etag = ETag::from_hex(&hex).unwrap();
        assert_eq!(etag.header(), format!("\"{hex}\"").as_str());
        assert_eq!(ETag::from_hex("abc"), None);
        assert_eq!(ETag::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn a_request_is_held_only_with_a_wait_and_the_current_tag() {
        let current = ETag([1; 32]);
        let request = |headers: &[(&str, String)]| {
            let mut builder = Request::get("/bundles/x");
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            BundleRequest::parse(&builder.body(()).unwrap()).expect("GET is parsed")
        };
        let tag = format!("\"{}\"", hex::encode(current.0));
        let wait = ("Prefer", "modes=snapshot;wait=5".to_string());
        let held = request(&[("If-None-Match", tag.clone()), wait.clone()]);
        assert_eq!(held.hold_for(current), Some(Duration::from_secs(5)));
        assert_eq!(held.content_type(), OPA_BUNDLES);
        let stale = request(&[("If-None-Match", "\"old\"".into()), wait.clone()]);
        assert_eq!(stale.hold_for(current), None);
        assert!(!stale.has(current));
        let no_wait = request(&[("If-None-Match", tag.clone())]);
        assert_eq!(no_wait.hold_for(current), None);
        assert!(no_wait.has(current));
        assert_eq!(no_wait.content_type(), GZIP);
        let zero = request(&[("If-None-Match", tag), ("Prefer", "wait=0".into())]);
        assert_eq!(zero.hold_for(current), None);

        let post = Request::post("/bundles/x").body(()).unwrap();
        assert!(BundleRequest::parse(&post).is_none());
    }

    #[tokio::test]
    async fn file_body_streams_exactly_len_bytes_in_chunks() {
        let content: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| i as u8).collect();
        let served = Served {
            etag: ETag([0; 32]),
            len: content.len() as u64,
            reader: Box::new(io::Cursor::new(content.clone())),
            label: "test".into(),
        };
        let mut body = ok(served, false, GZIP).into_body();
        let mut frames = 0;
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert!(got == content);
    }

    #[tokio::test]
    async fn file_body_that_runs_short_is_an_error() {
        let served = Served {
            etag: ETag([0; 32]),
            len: 10,
            reader: Box::new(io::Cursor::new(b"short".to_vec())),
            label: "test".into(),
        };
        let mut body = ok(served, false, GZIP).into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "short"
        );
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UnexpectedEof);
        assert!(body.frame().await.is_none());
    }
}
