//! The lean gRPC transport of the load (`stampede::grpc::FastChannel`) against a small HTTP/2
//! server written here with the `h2` crate, which can answer in ways a real Milvus rarely does
//! on demand: answers split over many DATA frames, trailers-only errors, closed connections.
//! (Against the real Milvus the transport is exercised by every load test: tests/run.rs,
//! tests/stall.rs, tests/worker.rs.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use prost::Message;
use stampede::grpc::FastChannel;
use stampede::pb::milvus::common as pbc;
use tonic::Code;

/// What the test server answers to one call.
enum Reply {
    /// A message (framed here) and grpc-status 0.
    Message(Bytes),
    /// A trailers-only answer: HEADERS with grpc-status / grpc-message, no body.
    Error(u32, &'static str),
}

type Handler = Arc<dyn Fn(&HeaderMap, Bytes) -> Reply + Send + Sync>;

struct TestServer {
    address: String,
    connections: Arc<AtomicUsize>,
}

/// Serves HTTP/2 on 127.0.0.1:0; with `close_after_one`, each connection answers one call and
/// then closes (GOAWAY), as a restarting server or a proxy draining connections does.
async fn serve(handler: Handler, close_after_one: bool) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(socket).await.unwrap();
                while let Some(Ok((request, respond))) = conn.accept().await {
                    let handler = Arc::clone(&handler);
                    let answer = answer(request, respond, handler);
                    if close_after_one {
                        answer.await;
                        conn.graceful_shutdown();
                        while conn.accept().await.is_some() {}
                        return;
                    }
                    tokio::spawn(answer);
                }
            });
        }
    });
    TestServer {
        address,
        connections,
    }
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    handler: Handler,
) {
    let (parts, mut body) = request.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let mut data = data.freeze();
    assert_eq!(data.get_u8(), 0, "requests are not compressed");
    assert_eq!(data.get_u32() as usize, data.len(), "one whole message");
    match handler(&parts.headers, data) {
        Reply::Message(message) => {
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let mut send = respond.send_response(response, false).unwrap();
            let mut framed = BytesMut::with_capacity(5 + message.len());
            framed.put_u8(0);
            framed.put_u32(message.len() as u32);
            framed.put_slice(&message);
            send.send_data(framed.freeze(), false).unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            send.send_trailers(trailers).unwrap();
        }
        Reply::Error(code, message) => {
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string())
                .header("grpc-message", message)
                .body(())
                .unwrap();
            respond.send_response(response, true).unwrap();
        }
    }
}

/// Answers every call with a Status whose reason is the request's reason repeated `times`.
fn echo(times: usize) -> Handler {
    Arc::new(move |_, body| {
        let request = pbc::Status::decode(body).unwrap();
        let reply = pbc::Status {
            reason: request.reason.repeat(times),
            ..Default::default()
        };
        Reply::Message(reply.encode_to_vec().into())
    })
}

const PATH: &str = "/milvus.proto.milvus.MilvusService/Search";

async fn channel(address: &str, metadata: HeaderMap, limit: usize) -> Arc<FastChannel> {
    FastChannel::connect(address, metadata, limit, Duration::from_secs(5))
        .await
        .unwrap()
}

fn status(reason: &str) -> pbc::Status {
    pbc::Status {
        reason: reason.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_answer_spread_over_many_data_frames_is_read_whole() {
    // 300 KB: h2 servers send at most 16 KB per DATA frame by default.
    let server = serve(echo(30_000), false).await;
    let channel = channel(&server.address, HeaderMap::new(), 1 << 20).await;
    let reply: pbc::Status = channel
        .unary(PATH, &status("0123456789"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.reason.len(), 300_000);
    assert!(reply.reason.starts_with("01234567890123456789"));
}

#[tokio::test]
async fn many_concurrent_calls_share_one_connection_and_each_gets_its_own_answer() {
    let server = serve(echo(2), false).await;
    let channel = channel(&server.address, HeaderMap::new(), 1 << 20).await;
    let calls = (0..500).map(|i| {
        let channel = Arc::clone(&channel);
        tokio::spawn(async move {
            let reply: pbc::Status = channel
                .unary(PATH, &status(&format!("<{i}>")), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(reply.reason, format!("<{i}><{i}>"));
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn metadata_content_type_te_and_the_timeout_are_sent_with_each_call() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let handler: Handler = Arc::new(move |headers, _| {
        let get = |k: &str| {
            headers
                .get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        record.lock().unwrap().push([
            get("content-type"),
            get("te"),
            get("grpc-timeout"),
            get("dbname"),
            get("authorization"),
        ]);
        Reply::Message(status("ok").encode_to_vec().into())
    });
    let server = serve(handler, false).await;
    let mut metadata = HeaderMap::new();
    metadata.insert("dbname", HeaderValue::from_static("shop"));
    metadata.insert(
        "authorization",
        HeaderValue::from_static("cm9vdDpNaWx2dXM="),
    );
    let channel = channel(&server.address, metadata, 1 << 20).await;
    let _: pbc::Status = channel
        .unary(PATH, &status("x"), Duration::from_millis(2500))
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [[
            "application/grpc".to_string(),
            "trailers".to_string(),
            "2500m".to_string(),
            "shop".to_string(),
            "cm9vdDpNaWx2dXM=".to_string(),
        ]]
    );
}

#[tokio::test]
async fn a_trailers_only_error_keeps_its_code_and_its_percent_decoded_message() {
    let handler: Handler = Arc::new(|_, _| Reply::Error(5, "collection%20not%20found%3A%20books"));
    let server = serve(handler, false).await;
    let channel = channel(&server.address, HeaderMap::new(), 1 << 20).await;
    let err = channel
        .unary::<_, pbc::Status>(PATH, &status("x"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "collection not found: books");
}

#[tokio::test]
async fn an_answer_above_the_size_limit_is_refused_and_the_connection_stays_usable() {
    let server = serve(echo(1000), false).await;
    let channel = channel(&server.address, HeaderMap::new(), 4096).await;
    let err = channel
        .unary::<_, pbc::Status>(PATH, &status("0123456789"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let small: pbc::Status = channel
        .unary(PATH, &status("ab"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(small.reason.len(), 2000);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_closed_connection_is_reopened_for_the_next_call() {
    let server = serve(echo(1), true).await;
    let channel = channel(&server.address, HeaderMap::new(), 1 << 20).await;
    let mut answered = 0;
    for i in 0..5 {
        // A call may meet the connection while it is being closed; the next one reconnects.
        match channel
            .unary::<_, pbc::Status>(PATH, &status(&format!("call {i}")), Duration::from_secs(5))
            .await
        {
            Ok(reply) => {
                assert_eq!(reply.reason, format!("call {i}"));
                answered += 1;
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
        // Let the GOAWAY arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered, 5, "each call found a live connection");
    assert_eq!(server.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_with_unavailable_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = FastChannel::connect(&address, HeaderMap::new(), 1024, Duration::from_secs(2))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(&address), "{}", err.message());
}
