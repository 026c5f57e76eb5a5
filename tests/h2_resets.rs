//! Envoy multiplexes every Check over one HTTP/2 connection, and when its own
//! downstreams go away (wrk closing 64 connections) it resets all their
//! in-flight Checks at once. h2's default allows 20 resets of streams the
//! server has not accepted yet before it drops the whole connection, which
//! failed unrelated requests closed. stsgate allows 1024; this test resets
//! 200 streams the way Envoy does and then uses the same connection.

mod support;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use support::*;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

fn grpc_request(addr: std::net::SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{CHECK_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A gRPC length-prefixed message.
fn framed(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_stream_resets_does_not_drop_the_connection() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let tcp = tokio::net::TcpStream::connect(h.grpc_addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    // Open streams and reset them before the server can accept them, all in
    // one burst, as Envoy does.
    let mut pending = Vec::new();
    for _ in 0..200 {
        client = client.ready().await.expect("the connection still takes streams");
        let (response, mut send) = client.send_request(grpc_request(h.grpc_addr), false).expect("open a stream");
        send.send_reset(h2::Reason::CANCEL);
        pending.push(response);
    }
    drop(pending);

    // The same connection still answers a real Check.
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let check =
        check_request(&[("authorization", &format!("Bearer {token}"))], &[("audience", "orders")], "a.test", "/");
    let mut client = client.ready().await.expect("the connection survived the resets");
    let (response, mut send) = client.send_request(grpc_request(h.grpc_addr), false).expect("open a stream");
    send.send_data(framed(&check), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("an answer in time")
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("gRPC trailers");
    assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"), "{trailers:?}");
    let answer = stsgate::pb::envoy::service::auth::v3::CheckResponse::decode(&bytes[5..]).expect("a CheckResponse");
    allowed(&answer);
    assert!(!connection.is_finished(), "the connection is still open");
    h.shutdown().await;
}
