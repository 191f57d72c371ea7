//! Hostile clients of the API: slow and surplus streams, silent and surplus
//! connections, huge fields, malformed and oversized messages, unsigned
//! cursors at their top, names that hide or reorder what an operator reads.

use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use pb::EnforcementAction::Block;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::{mcp, set, skill};

const WAIT: Duration = Duration::from_secs(30);

/// Reads until the daemon closes the connection (EOF or reset). Bounded by
/// `WAIT` so a daemon that never closes fails the test instead of hanging it.
async fn closed_by_daemon(conn: &mut tokio::net::UnixStream) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the daemon did not close the connection");
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection that
/// says hello and then asks for nothing.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn surplus_streams_are_refused_and_a_reader_that_stops_is_cut_off() {
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_SERVER__MAX_STREAMS", "2"),
        ("DEFENSECLAW_SERVER__STREAM_BUFFER_BYTES", "65536"),
        ("DEFENSECLAW_SERVER__STREAM_STALL_TIMEOUT_SECS", "1"),
    ])
    .await
    .unwrap();
    let mut c = d.client().await.unwrap();
    // About 1.2 MB of audit log: more than the reader's flow-control window,
    // the daemon's HTTP/2 send buffer and the stream's queue together.
    let reason = "r".repeat(2000);
    let entries = 500;
    for i in 0..entries {
        c.set_enforcement(set(skill(&format!("s{i}")), Block, &reason))
            .await
            .unwrap();
    }
    // Two readers with small windows that never read.
    let slow = || async {
        let channel = defenseclaw_testkit::uds_channel_with(&d.socket, |e| {
            e.initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
        })
        .await
        .unwrap();
        pb::control_client::ControlClient::new(channel)
    };
    let mut export = slow()
        .await
        .export_audit(pb::ExportAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut follow = slow()
        .await
        .follow_audit(pb::FollowAuditRequest {
            from_start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // A third stream is over the cap, on any connection.
    let refused = c.export_audit(pb::ExportAuditRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_streams"), "{refused:?}");

    // Once the stalled readers are cut off their slots are free again.
    defenseclaw_testkit::wait_for("a slot freed by cutting off stalled readers", WAIT, || {
        let mut c = c.clone();
        async move {
            match c.follow_audit(pb::FollowAuditRequest::default()).await {
                Ok(_) => Some(()),
                Err(s) if s.code() == Code::ResourceExhausted => None,
                Err(s) => panic!("probe stream: {s:?}"),
            }
        }
    })
    .await
    .unwrap();

    for (what, stream) in [("ExportAudit", &mut export), ("FollowAudit", &mut follow)] {
        let mut received = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => received += 1,
                Ok(None) => panic!("{what}: ended normally after {received} entries"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
        assert!(
            status.message().contains("consumer too slow"),
            "{what}: {status:?}"
        );
        assert!(received < entries, "{what}: got the whole log");
    }
}

#[tokio::test]
async fn silent_connections_are_closed_and_calls_in_progress_are_not() {
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_SERVER__HANDSHAKE_TIMEOUT_SECS", "1"),
        ("DEFENSECLAW_SERVER__IDLE_TIMEOUT_SECS", "1"),
    ])
    .await
    .unwrap();
    // A call in progress (a follower waiting for entries) opened first.
    let mut c = d.client().await.unwrap();
    let mut follow = c
        .follow_audit(pb::FollowAuditRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Connects and sends nothing, not even the HTTP/2 preface.
    let mut silent = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    closed_by_daemon(&mut silent).await;

    // Sends the preface and settings, then no request.
    let mut idle = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    idle.write_all(H2_HELLO).await.unwrap();
    closed_by_daemon(&mut idle).await;

    // Both deadlines have passed for the follower's connection too, yet its
    // call still gets what happens next.
    let mut other = d.client().await.unwrap();
    other
        .set_enforcement(set(skill("after-idle"), Block, "still followed"))
        .await
        .unwrap();
    let entry = tokio::time::timeout(WAIT, follow.message())
        .await
        .expect("the follower got nothing")
        .unwrap()
        .expect("the follower's stream ended");
    assert_eq!(entry.target.unwrap().name, "after-idle");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let d = TestDaemon::start_with(&[("DEFENSECLAW_SERVER__MAX_CONNECTIONS", "2")])
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        conn.write_all(H2_HELLO).await.unwrap();
        // The daemon answers with its SETTINGS: this one holds a slot.
        let mut buf = [0u8; 9];
        conn.read_exact(&mut buf).await.unwrap();
        held.push(conn);
    }
    let mut surplus = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let _ = surplus.write_all(H2_HELLO).await;
    closed_by_daemon(&mut surplus).await;
    let third = async {
        let mut c = defenseclaw_testkit::control_client(&d.socket).await.ok()?;
        c.get_status(pb::GetStatusRequest {}).await.ok()
    };
    assert!(third.await.is_none(), "a third connection was served");

    // A freed slot is taken by the next client.
    drop(held.pop());
    defenseclaw_testkit::wait_for("a freed connection slot", WAIT, || {
        let socket = d.socket.clone();
        async move {
            let mut c = defenseclaw_testkit::control_client(&socket).await.ok()?;
            c.get_status(pb::GetStatusRequest {}).await.ok().map(|_| ())
        }
    })
    .await
    .unwrap();
}

fn assert_short_refusal(what: &str, status: &tonic::Status, input: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    let message = status.message();
    assert!(message.len() <= 512, "{what}: {} bytes", message.len());
    let prefix: String = input.chars().take(65).collect();
    assert!(!message.contains(&prefix), "{what} echoes its input");
}

#[tokio::test]
async fn huge_fields_are_refused_with_a_short_message() {
    let d = TestDaemon::start_with(&[("DEFENSECLAW_SERVER__MAX_MESSAGE_BYTES", "8388608")])
        .await
        .unwrap();
    let mut c = d.client().await.unwrap();
    let huge = "x".repeat(1 << 20);
    let r = c
        .set_enforcement(set(skill(&huge), Block, "r"))
        .await
        .unwrap_err();
    assert_short_refusal("target name", &r, &huge);
    let r = c
        .set_enforcement(set(skill("fine"), Block, &huge))
        .await
        .unwrap_err();
    assert_short_refusal("reason", &r, &huge);
    let r = c
        .list_audit(pb::ListAuditRequest {
            since: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_short_refusal("since", &r, &huge);
    let r = c
        .record_connected_account(pb::RecordConnectedAccountRequest {
            connection: "github".into(),
            account_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_short_refusal("account id", &r, &huge);
    let r = c
        .scan_target(pb::ScanTargetRequest {
            kind: pb::TargetKind::Skill as i32,
            path: "/nonexistent".into(),
            name: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_short_refusal("scan name", &r, &huge);
}

/// Sends raw bytes as the request message and reads the reply as bytes.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self {
        Self
    }
    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(channel: Channel, method: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static(method);
    match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
        Ok(_) => panic!("{method} accepted a hostile message"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn malformed_messages_are_invalid_argument_and_oversized_resource_exhausted() {
    let d = TestDaemon::start_with(&[("DEFENSECLAW_SERVER__MAX_MESSAGE_BYTES", "65536")])
        .await
        .unwrap();
    let channel = defenseclaw_testkit::uds_channel(&d.socket).await.unwrap();
    let garbage: [(&str, Vec<u8>); 3] = [
        // Field 1, length-delimited, claims 2^35 bytes.
        ("length past the end", b"\x0a\xff\xff\xff\xff\x7f".to_vec()),
        // Field 2 (a string) holding invalid UTF-8.
        ("invalid UTF-8", b"\x12\x02\xff\xfe".to_vec()),
        // A truncated varint tag.
        ("truncated tag", b"\xff".to_vec()),
    ];
    for method in [
        "/defenseclaw.v1.Control/GetStatus",
        "/defenseclaw.v1.Control/CheckTarget",
        "/defenseclaw.v1.Control/SetEnforcement",
        "/defenseclaw.v1.Control/FollowAudit",
        "/defenseclaw.v1.Control/RecordConnectedAccount",
    ] {
        for (what, bytes) in &garbage {
            // GetStatus has no fields: unknown ones are skipped, so only a
            // broken wire format is refused there.
            if method.ends_with("GetStatus") && *what == "invalid UTF-8" {
                continue;
            }
            let status = raw_call(channel.clone(), method, bytes.clone()).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {what}: {status:?}"
            );
        }
        let status = raw_call(channel.clone(), method, vec![0u8; 65_537]).await;
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{method} oversized: {status:?}"
        );
        assert!(status.message().contains("max_message_bytes"), "{status:?}");
    }
    // The connection that sent all this still serves well-formed calls.
    pb::control_client::ControlClient::new(channel)
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn unsigned_cursors_at_their_top_replay_and_find_nothing() {
    let mut d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    c.set_enforcement(set(skill("before"), Block, "r"))
        .await
        .unwrap();
    let mut top = c
        .follow_audit(pb::FollowAuditRequest {
            after_seq: u64::MAX,
            from_start: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut live = c
        .follow_audit(pb::FollowAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    c.set_enforcement(set(skill("during"), Block, "r"))
        .await
        .unwrap();
    // The live follower sees the new entry: it has been published.
    let seen = live.message().await.unwrap().unwrap();
    assert_eq!(seen.target.unwrap().name, "during");
    let missing = c
        .dismiss_finding(pb::DismissFindingRequest {
            id: u64::MAX,
            reason: "r".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    // Ending the daemon ends the streams; the top follower got nothing.
    drop(c);
    d.stop().await.unwrap();
    let mut replayed = Vec::new();
    while let Ok(Some(entry)) = top.message().await {
        replayed.push(entry.seq);
    }
    assert!(
        replayed.is_empty(),
        "after_seq = 2^64-1 replayed {replayed:?}"
    );
}

#[tokio::test]
async fn names_outside_the_alphabet_are_refused_for_every_kind() {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    let hostile = [
        ".",
        "..",
        "-rf",
        "evil\u{202e}gnp",
        "zero\u{200b}width",
        "line\u{2028}break",
    ];
    for bad in hostile {
        let mut refusals = Vec::new();
        for target in [skill(bad), mcp(bad)] {
            refusals.push((
                "target (SetEnforcement)",
                c.set_enforcement(set(target.clone(), Block, "r"))
                    .await
                    .err(),
            ));
            refusals.push((
                "target (CheckTarget)",
                c.check_target(target.unwrap()).await.err(),
            ));
        }
        refusals.push((
            "server (RevokeConnection)",
            c.revoke_connection(pb::RevokeConnectionRequest {
                server: bad.into(),
                connection: "github".into(),
                reason: "r".into(),
                at_provider: false,
            })
            .await
            .err(),
        ));
        refusals.push((
            "server (ListConnections)",
            c.list_connections(pb::ListConnectionsRequest { server: bad.into() })
                .await
                .err(),
        ));
        refusals.push((
            "connection (RevokeConnection)",
            c.revoke_connection(pb::RevokeConnectionRequest {
                server: "fine".into(),
                connection: bad.into(),
                reason: "r".into(),
                at_provider: false,
            })
            .await
            .err(),
        ));
        refusals.push((
            "connection (RecordConnectedAccount)",
            c.record_connected_account(pb::RecordConnectedAccountRequest {
                connection: bad.into(),
                account_id: "cac_0123".into(),
            })
            .await
            .err(),
        ));
        refusals.push((
            "connection (SetEnforcement allow)",
            c.set_enforcement(pb::SetEnforcementRequest {
                connections: vec![pb::ConnectionDeclaration {
                    connection: bad.into(),
                    scopes: vec![],
                }],
                ..set(mcp("fine"), pb::EnforcementAction::Allow, "r")
            })
            .await
            .err(),
        ));
        refusals.push((
            "account (RecordConnectedAccount)",
            c.record_connected_account(pb::RecordConnectedAccountRequest {
                connection: "github".into(),
                account_id: bad.into(),
            })
            .await
            .err(),
        ));
        for (what, refusal) in refusals {
            let status = refusal.unwrap_or_else(|| panic!("{what}: {bad:?} accepted"));
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{what} {bad:?}: {status:?}"
            );
            assert!(
                !status
                    .message()
                    .contains(['\u{202e}', '\u{200b}', '\u{2028}']),
                "{what}: the message carries an invisible character: {status:?}"
            );
        }
    }
    // Names real providers and tests use still pass.
    c.set_enforcement(set(skill("evil-skill_1.0"), Block, "r"))
        .await
        .unwrap();
    c.record_connected_account(pb::RecordConnectedAccountRequest {
        connection: "google-oauth2".into(),
        account_id: "cac_0123abcd".into(),
    })
    .await
    .unwrap();
    // Nothing refused reached the store.
    let targets = c
        .list_targets(pb::ListTargetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .targets;
    let names: Vec<_> = targets
        .iter()
        .map(|t| t.target.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["evil-skill_1.0"]);
}
