//! A lean gRPC client for the load's hot path: unary calls over one plain HTTP/2 connection
//! (the `h2` crate, which tonic's transport also uses underneath).
//!
//! Why not tonic's `Channel` for searches: every tonic call goes through a tower `Buffer` (an
//! mpsc hop to a worker task), hyper's per-request body pipe and a streaming codec, and h2 then
//! writes the HEADERS and DATA frames of a request in separate `writev` calls. Here a request is
//! one contiguous buffer handed to h2 together with its headers, so the connection task writes
//! both frames — and those of every other request queued meanwhile — in one flush. That is what
//! lets one core issue more than 50,000 searches a second (bench/RESULTS.md, "Request ceiling").
//!
//! Only what a unary Milvus call needs is implemented: no compression, no TLS (a TLS target uses
//! tonic), no streaming. Errors come back as [`tonic::Status`] so callers map them like tonic's.
//! A lost connection is re-established on the next call.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use tonic::{Code, Status};

/// Receive windows: large enough that hundreds of answers in flight never wait for a window
/// update (hyper's defaults for a client, and no adaptive window — see `milvus.rs`).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// One HTTP/2 connection to a gRPC server for unary calls; cheap to share (`Arc`).
pub struct FastChannel {
    authority: Authority,
    /// `host:port` to open the TCP connection to.
    address: String,
    /// Metadata sent with every call (authorization, database, identifier).
    metadata: HeaderMap,
    max_message_bytes: usize,
    connect_timeout: Duration,
    current: std::sync::Mutex<Option<Connection>>,
    /// Held while (re)connecting, so concurrent callers wait for one new connection.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

#[derive(Clone)]
struct Connection {
    generation: u64,
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl FastChannel {
    /// A channel to `address` (`host:port`, no scheme) that connects on its first call (or
    /// [`Self::ready`]), each connection attempt bounded by `connect_timeout`.
    pub fn new(
        address: &str,
        metadata: HeaderMap,
        max_message_bytes: usize,
        connect_timeout: Duration,
    ) -> Result<Arc<FastChannel>, Status> {
        let authority: Authority = address.parse().map_err(|e| {
            Status::invalid_argument(format!("`{address}` is not a host:port address: {e}"))
        })?;
        Ok(Arc::new(FastChannel {
            authority,
            address: address.to_string(),
            metadata,
            max_message_bytes,
            connect_timeout,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }))
    }

    /// [`Self::new`] and connected now.
    pub async fn connect(
        address: &str,
        metadata: HeaderMap,
        max_message_bytes: usize,
        connect_timeout: Duration,
    ) -> Result<Arc<FastChannel>, Status> {
        let channel = Self::new(address, metadata, max_message_bytes, connect_timeout)?;
        channel.ready().await?;
        Ok(channel)
    }

    /// Opens the connection if there is none yet, so the first call does not pay for it.
    pub async fn ready(&self) -> Result<(), Status> {
        self.connection().await.map(|_| ())
    }

    /// The live connection, opening a new one when there is none or the last one closed.
    async fn connection(&self) -> Result<Connection, Status> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let conn = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "no connection to {} within {:?}",
                    self.address, self.connect_timeout
                ))
            })??;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn live(&self) -> Option<Connection> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
    }

    async fn open(&self) -> Result<Connection, Status> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {}: {e}", self.address)))?;
        // Nagle would hold back a request while the previous one is unacknowledged.
        tcp.set_nodelay(true)
            .map_err(|e| Status::unavailable(format!("cannot set TCP_NODELAY: {e}")))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(1024 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(Coalesce::new(tcp))
            .await
            .map_err(|e| h2_status(&e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%address, error = %e, "HTTP/2 connection ended");
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Connection {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            send,
            closed,
        })
    }

    /// Forgets the connection of `generation` after a connection-level error.
    fn discard(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    /// One unary call of `path` (e.g. `/milvus.proto.milvus.MilvusService/Search`). `timeout`
    /// is sent as `grpc-timeout` so the server gives up too; the caller bounds the wait.
    pub async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = encode_message(request, self.max_message_bytes)?;
        self.unary_framed(path, body, timeout).await
    }

    /// [`Self::unary`] of a request already encoded and framed (5-byte prefix + protobuf).
    pub async fn unary_framed<Resp>(
        &self,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Resp, Status>
    where
        Resp: prost::Message + Default,
    {
        let Connection {
            generation, send, ..
        } = self.connection().await?;
        match self.exchange(send, path, body, timeout).await {
            Ok(bytes) => decode_message(bytes, self.max_message_bytes),
            Err(Failure::Connection(status)) => {
                self.discard(generation);
                Err(status)
            }
            Err(Failure::Call(status)) => Err(status),
        }
    }

    async fn exchange(
        &self,
        send: SendRequest<Bytes>,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Failure> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(PathAndQuery::from_static(path));
        let uri = http::Uri::from_parts(uri)
            .map_err(|e| Failure::Call(Status::internal(format!("request URI: {e}"))))?;
        let mut request = http::Request::post(uri)
            .body(())
            .map_err(|e| Failure::Call(Status::internal(format!("request: {e}"))))?;
        let headers = request.headers_mut();
        headers.reserve(4 + self.metadata.len());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(GRPC_TIMEOUT, cached_grpc_timeout(timeout));
        for (k, v) in &self.metadata {
            headers.insert(k.clone(), v.clone());
        }

        let mut send = send
            .ready()
            .await
            .map_err(|e| Failure::Connection(h2_status(&e)))?;
        let (response, mut stream) = send
            .send_request(request, false)
            .map_err(|e| classify(&e))?;
        stream.send_data(body, true).map_err(|e| classify(&e))?;

        let response = response.await.map_err(|e| classify(&e))?;
        let (parts, mut body) = response.into_parts();
        // A trailers-only answer (an error before any message) has grpc-status in the headers.
        if let Some(status) = status_of(&parts.headers) {
            return Err(Failure::Call(status.err().unwrap_or_else(|| {
                Status::internal("the server answered OK without a message")
            })));
        }
        if parts.status != http::StatusCode::OK {
            return Err(Failure::Call(status_of_http(parts.status)));
        }
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| classify(&e))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            match (&mut first, &mut more) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                    m.extend_from_slice(f);
                    m.extend_from_slice(&chunk);
                    more = Some(m);
                }
                (Some(_), Some(m)) => m.extend_from_slice(&chunk),
            }
            let received = more
                .as_ref()
                .map_or_else(|| first.as_ref().map_or(0, Bytes::len), |m| m.len());
            if received > self.max_message_bytes.saturating_add(5) {
                return Err(Failure::Call(Status::resource_exhausted(format!(
                    "the answer is larger than the {} bytes allowed",
                    self.max_message_bytes
                ))));
            }
        }
        let trailers = body.trailers().await.map_err(|e| classify(&e))?;
        match trailers.as_ref().and_then(status_of) {
            Some(Ok(())) => {}
            Some(Err(status)) => return Err(Failure::Call(status)),
            None => {
                return Err(Failure::Call(Status::internal(
                    "the server's answer ended without a grpc-status",
                )));
            }
        }
        Ok(match more {
            Some(m) => m.freeze(),
            None => first.unwrap_or_default(),
        })
    }
}

/// Write coalescing under h2: writes go to a buffer; a flush with data buffered first yields
/// once (the connection task is woken at the back of the run queue, so every request task that
/// is ready meanwhile queues its frames) and writes everything on the next flush.
///
/// Without it, tokio runs the connection task right after each request wakes it, and h2 writes
/// each request on its own (one `writev` and one loopback packet per request; the kernel's TCP
/// work was the largest cost of a request). Under light load the extra poll costs microseconds;
/// under heavy load many requests share one write.
struct Coalesce<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// The last flush with data yielded instead of writing.
    yielded: bool,
}

/// Above this many buffered bytes a write goes out without waiting for the flush.
const COALESCE_LIMIT: usize = 256 * 1024;

impl<T> Coalesce<T> {
    fn new(io: T) -> Self {
        Coalesce {
            io,
            buf: Vec::with_capacity(16 * 1024),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> Coalesce<T> {
    /// Writes everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() >= COALESCE_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() >= COALESCE_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for slice in data {
            self.buf.extend_from_slice(slice);
            n += slice.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.written < self.buf.len() {
            if !self.yielded {
                // h2 flushes at the end of every poll of the connection; the wake makes sure
                // there is a next poll, after the tasks that are ready now.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_drain(cx))?;
        }
        self.yielded = false;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a call failed: the call alone, or the whole connection (then it is reopened).
enum Failure {
    Call(Status),
    Connection(Status),
}

fn classify(e: &h2::Error) -> Failure {
    let status = h2_status(e);
    if e.is_io() || e.is_go_away() {
        Failure::Connection(status)
    } else {
        Failure::Call(status)
    }
}

/// The gRPC status for an HTTP/2 error, with the codes tonic gives the same errors.
fn h2_status(e: &h2::Error) -> Status {
    let code = match e.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        _ if e.is_io() || e.is_go_away() => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, format!("h2 protocol error: {e}"))
}

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

thread_local! {
    /// The last `grpc-timeout` value built on this thread: a client's calls all carry the same
    /// timeout, so the hot path clones it instead of formatting it per request.
    static LAST_GRPC_TIMEOUT: std::cell::RefCell<Option<(Duration, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// [`grpc_timeout`], from the per-thread cache when the timeout is the last one seen.
fn cached_grpc_timeout(timeout: Duration) -> HeaderValue {
    LAST_GRPC_TIMEOUT.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((t, value)) if *t == timeout => value.clone(),
            _ => {
                let value = grpc_timeout(timeout);
                *last = Some((timeout, value.clone()));
                value
            }
        }
    })
}

/// The `grpc-timeout` header: at most eight digits, in the finest unit that fits.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let ms = timeout.as_millis();
    let text = if ms <= 99_999_999 {
        format!("{ms}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("99999999S"))
}

/// The length-prefixed gRPC message: flag 0 (uncompressed), big-endian length, the protobuf.
fn encode_message<M: prost::Message>(message: &M, limit: usize) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "the request is {len} bytes, more than the {limit} allowed"
        )));
    }
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding the request: {e}")))?;
    Ok(buf.freeze())
}

/// The message of a unary answer's body.
fn decode_message<M: prost::Message + Default>(mut body: Bytes, limit: usize) -> Result<M, Status> {
    if body.len() < 5 {
        return Err(Status::internal(format!(
            "the answer has {} bytes, fewer than a gRPC message header",
            body.len()
        )));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(
            "the server sent a compressed message; compression was not offered",
        ));
    }
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "the answer is {len} bytes, more than the {limit} allowed"
        )));
    }
    if body.len() != len {
        return Err(Status::internal(format!(
            "the answer's message says {len} bytes but {} arrived",
            body.len()
        )));
    }
    M::decode(body).map_err(|e| Status::internal(format!("decoding the answer: {e}")))
}

/// `grpc-status` (and `grpc-message`) of headers or trailers, if present.
fn status_of(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let code = headers.get("grpc-status")?;
    let code = code
        .to_str()
        .ok()
        .and_then(|c| c.trim().parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    if code == Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Err(Status::new(code, message)))
}

/// The gRPC code for an HTTP status without grpc-status (gRPC's "HTTP to gRPC status" table).
fn status_of_http(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the server answered HTTP {status}"))
}

/// `grpc-message` is percent-encoded UTF-8.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (raw[i], raw.get(i + 1), raw.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::milvus::common as pbc;

    #[test]
    fn a_message_survives_the_length_prefixed_framing() {
        let status = pbc::Status {
            error_code: 5,
            reason: "collection not found".to_string(),
            ..Default::default()
        };
        let framed = encode_message(&status, 1 << 20).unwrap();
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            framed.len() - 5
        );
        let back: pbc::Status = decode_message(framed, 1 << 20).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn truncated_compressed_or_oversized_answers_are_errors_not_panics() {
        let framed = encode_message(
            &pbc::Status {
                reason: "x".repeat(100),
                ..Default::default()
            },
            1 << 20,
        )
        .unwrap();
        let short = framed.slice(..framed.len() - 1);
        assert_eq!(
            decode_message::<pbc::Status>(short, 1 << 20)
                .unwrap_err()
                .code(),
            Code::Internal
        );
        assert_eq!(
            decode_message::<pbc::Status>(Bytes::from_static(&[0, 0]), 1 << 20)
                .unwrap_err()
                .code(),
            Code::Internal
        );
        let mut compressed = BytesMut::from(&framed[..]);
        compressed[0] = 1;
        assert_eq!(
            decode_message::<pbc::Status>(compressed.freeze(), 1 << 20)
                .unwrap_err()
                .code(),
            Code::Unimplemented
        );
        assert_eq!(
            decode_message::<pbc::Status>(framed, 10)
                .unwrap_err()
                .code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            encode_message(&pbc::Status::default(), 0)
                .map(|b| b.len())
                .ok(),
            Some(5)
        );
    }

    #[test]
    fn grpc_status_and_percent_encoded_messages_are_read_from_trailers() {
        let mut h = HeaderMap::new();
        assert!(status_of(&h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(matches!(status_of(&h), Some(Ok(()))));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("server%20is%20down%3A%20%E2%9C%97%zz"),
        );
        let status = status_of(&h).unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "server is down: ✗%zz");
    }

    #[test]
    fn timeouts_are_sent_in_the_finest_unit_of_at_most_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        // The cache answers for the timeout asked, not the last one built.
        for ms in [1500, 1500, 20, 1500] {
            let d = Duration::from_millis(ms);
            assert_eq!(cached_grpc_timeout(d), grpc_timeout(d));
        }
        assert_eq!(
            status_of_http(http::StatusCode::NOT_FOUND).code(),
            Code::Unimplemented
        );
    }
}
