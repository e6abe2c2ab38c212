//! S3-specific behaviour against moto on loopback: the growing part size end to end,
//! retries over injected faults, error kinds, and redaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use ops_core::testkit::target::{pattern, pieces, read_all, unique_prefix};
use ops_core::{BackupTarget, ErrorKind, ErrorStatus, PutOutcome};
use ops_storage::s3_test_server::S3TestServer;
use ops_storage::{
    FaultConfig, FaultyTarget, MultipartOptions, RetryConfig, RetryTarget, TargetOptions,
    open_object_store_target, open_target,
};

const KIB: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_parts_beat_a_small_part_limit() {
    let server = S3TestServer::start_with_min_part_size_async(KIB)
        .await
        .expect("start the S3 test server");
    // Ten parts of 64 KiB hold 640 KiB; the doubling rule (every part, with a budget
    // of ten) holds 64 KiB × 1023 ≈ 64 MiB.
    let multipart = MultipartOptions::default()
        .with_part_size(64 * KIB)
        .with_max_parts(10);
    let options = server.options().with_multipart(multipart.clone());
    let target = open_object_store_target(&server.url("dbops-test"), &options).expect("open");
    let key = format!("{}big", unique_prefix());
    let len = 3 * 1024 * 1024 + 12_345;
    let data = Bytes::from(pattern(len, 9));
    let written = target
        .put_stream(&key, pieces(data.clone()))
        .await
        .expect("put_stream beyond max_parts × part_size");
    assert_eq!(written, len as u64);
    assert!(read_all(&target, &key).await.expect("get") == data.as_ref());

    // The ETag of a multipart object ends in "-<parts>": 64+128+256+512+1024+2048 KiB
    // covers 3 MiB + 12 KiB in six parts.
    let path = object_store::path::Path::parse(&key).expect("path");
    let meta = target.store().head(&path).await.expect("head");
    let etag = meta.e_tag.unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-6"), "ETag {etag}");

    // With uniform parts the same object does not fit, and nothing is left behind.
    let options = server
        .options()
        .with_multipart(multipart.with_uniform_parts(true));
    let uniform = open_object_store_target(&server.url("dbops-test"), &options).expect("open");
    let key = format!("{}too-big", unique_prefix());
    let err = uniform
        .put_stream(&key, pieces(data))
        .await
        .expect_err("640 KiB limit");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(uniform.head(&key).await.expect("head").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_ride_out_five_percent_faults() {
    let server = S3TestServer::start_async()
        .await
        .expect("start the S3 test server");
    let options = server.options().with_retry(None);
    let s3 = open_target(&server.url("dbops-test"), &options).expect("open");
    let faulty = Arc::new(FaultyTarget::new(
        s3,
        FaultConfig::default()
            .with_failure_rate(0.05)
            .with_lost_reply_rate(0.05)
            .with_broken_listing_rate(0.3)
            .with_delay(0.05, Duration::from_millis(5))
            .with_seed(42),
    ));
    let target = RetryTarget::new(faulty.clone()).with_config(
        RetryConfig::default()
            .with_max_attempts(10)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(20)),
    );
    let base = unique_prefix();
    let n = 200;
    let started = Instant::now();
    let puts = futures::stream::iter(0..n)
        .map(|i| {
            let target = &target;
            let key = format!("{base}obj/{i:04}");
            async move {
                let data = Bytes::from(pattern(1000 + i, i as u8));
                target.put(&key, data).await
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await;
    puts.expect("every put succeeds through retries");
    for i in 0..n {
        let key = format!("{base}obj/{i:04}");
        let want = pattern(1000 + i, i as u8);
        let got = read_all(&target, &key).await.expect("get");
        assert!(got == want, "object {i} differs");
        let range = target.get_range(&key, 10..20).await.expect("get_range");
        assert_eq!(range.as_ref(), &want[10..20]);
        let meta = target.head(&key).await.expect("head").expect("exists");
        assert_eq!(meta.size, want.len() as u64);
    }
    let listed: Vec<_> = target
        .list(&format!("{base}obj/"))
        .await
        .expect("list")
        .try_collect()
        .await
        .expect("listing");
    assert_eq!(listed.len(), n);

    // Locks through lost replies: our own earlier write is recognised as ours.
    for i in 0..50 {
        let key = format!("{base}locks/{i}");
        let outcome = target
            .put_if_absent(&key, Bytes::from(format!("owner-{i}")))
            .await
            .expect("put_if_absent");
        assert_eq!(outcome, PutOutcome::Created, "lock {i}");
        let again = target
            .put_if_absent(&key, Bytes::from_static(b"someone else"))
            .await
            .expect("put_if_absent");
        assert_eq!(again, PutOutcome::AlreadyExists, "lock {i} taken twice");
    }
    for i in 0..n {
        target
            .delete(&format!("{base}obj/{i:04}"))
            .await
            .expect("delete");
    }
    let injected = faulty.injected_faults();
    assert!(
        injected > 20,
        "only {injected} faults in {} calls",
        faulty.calls()
    );
    eprintln!(
        "{} calls, {injected} injected faults, all recovered in {:?}",
        faulty.calls(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_persistent() {
    let memory =
        open_target("memory://", &TargetOptions::default().with_retry(None)).expect("open");
    let always = Arc::new(FaultyTarget::new(
        memory,
        FaultConfig::default().with_failure_rate(1.0),
    ));
    let target = RetryTarget::new(always.clone()).with_config(
        RetryConfig::default()
            .with_max_attempts(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2)),
    );
    let err = target
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect_err("fails");
    assert_eq!(err.status(), ErrorStatus::Persistent, "{err:?}");
    assert_eq!(always.calls(), 3);
    // put_stream is never retried: its stream is gone after one attempt.
    let stream = futures::stream::once(async { Ok(Bytes::from_static(b"x")) }).boxed();
    target.put_stream("k", stream).await.expect_err("fails");
    assert_eq!(always.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_temporary_and_names_the_object() {
    // A port nothing listens on: bind, note, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let options = TargetOptions::default()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_credentials("AKIDEXAMPLE", "very-secret-value")
        .with_http_max_retries(0)
        .with_retry(None);
    let target = open_target("s3://bucket/prefix", &options).expect("open");
    let err = target
        .put("packs/ab/cd", Bytes::from_static(b"x"))
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(err.is_temporary(), "{err:?}");
    assert_eq!(err.context_value("object"), Some("packs/ab/cd"));
    assert_eq!(err.context_value("target"), Some("s3://bucket/prefix"));
    let text = format!("{err} {err:?} {target:?}");
    assert!(!text.contains("very-secret-value"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_and_debug_redaction() {
    let server = S3TestServer::start_async()
        .await
        .expect("start the S3 test server");
    let options = server.options().with_session_token("session-secret");
    let target = open_target(&server.url("no-such-bucket"), &options).expect("open");
    let err = target
        .head("x")
        .await
        .map(|_| ())
        .and(target.put("x", Bytes::from_static(b"x")).await);
    let err = err.expect_err("no bucket");
    assert!(!err.is_temporary(), "{err:?}");
    let faulty = FaultyTarget::new(target.clone(), FaultConfig::default());
    let text = format!("{err} {err:?} {target:?} {faulty:?} {options:?}");
    for secret in [
        ops_storage::s3_test_server::SECRET_ACCESS_KEY,
        "session-secret",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

/// The keys of the multipart uploads in progress in the test bucket.
async fn uploads_in_progress(server: &S3TestServer) -> Vec<String> {
    server
        .multipart_uploads_async("dbops-test")
        .await
        .expect("ListMultipartUploads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_put_stream_leaves_no_upload_in_progress() {
    // The parts of an unfinished multipart upload are never a visible object, so
    // `head` cannot tell whether a cancelled upload was aborted: ask S3 for the
    // uploads in progress (ListMultipartUploads) instead.
    let server = S3TestServer::start_async()
        .await
        .expect("start the S3 test server");
    let options = server
        .options()
        .with_multipart(MultipartOptions::default().with_part_size(5 * 1024 * 1024));
    let target = open_target(&server.url("dbops-test"), &options).expect("open");
    let key = format!("{}cancelled", unique_prefix());
    // Two full parts, then a source that never ends: the backup is cancelled.
    let stuck = pieces(Bytes::from(pattern(11 * 1024 * 1024, 3)))
        .chain(futures::stream::pending())
        .boxed();
    let upload = tokio::spawn({
        let target = target.clone();
        let key = key.clone();
        async move { target.put_stream(&key, stuck).await }
    });

    // First the check must see the upload: otherwise an empty answer proves nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !uploads_in_progress(&server).await.contains(&key) {
        assert!(!upload.is_finished(), "the stream never ends: {upload:?}");
        assert!(
            Instant::now() < deadline,
            "the multipart upload never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cancel (drop the future), as a cancelled backup does.
    upload.abort();
    assert!(upload.await.is_err_and(|e| e.is_cancelled()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = uploads_in_progress(&server).await;
        if !left.contains(&key) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled upload is still in progress: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(target.head(&key).await.expect("head").is_none());

    // A failing stream aborts its upload too.
    let key = format!("{}failed", unique_prefix());
    let failing = pieces(Bytes::from(pattern(11 * 1024 * 1024, 4)))
        .chain(futures::stream::once(async {
            Err(ops_core::Error::new(ErrorKind::Io, "the dump failed"))
        }))
        .boxed();
    target.put_stream(&key, failing).await.expect_err("fails");
    assert!(!uploads_in_progress(&server).await.contains(&key));
}

/// Serves HTTP requests on a loopback port with canned answers: request `n`
/// (0-based) gets `responses[n]`, every later one the last (whole HTTP/1.1
/// responses). Returns the endpoint and the request count. For answers moto cannot
/// be made to give.
async fn canned_http_server(responses: Vec<String>) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let response = responses[n.min(responses.len() - 1)].clone();
            tokio::spawn(async move {
                // Read the head and the body it announces, then answer and close.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (endpoint, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_request_conflict_is_temporary_not_already_exists() {
    // S3's answer when two `If-None-Match: *` puts of one key race: the other
    // writer may still fail, so the lock is not known to exist.
    const BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ConditionalRequestConflict</Code><Message>A conflicting conditional operation is currently in progress against this resource. Please try again.</Message></Error>";
    let response = format!(
        "HTTP/1.1 409 Conflict\r\nContent-Type: application/xml\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let (endpoint, requests) = canned_http_server(vec![response]).await;
    let options = TargetOptions::default()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_credentials("AKIDEXAMPLE", "secret")
        .with_path_style(true)
        .with_http_max_retries(0)
        .with_retry(None);
    let target = open_target("s3://bucket", &options).expect("open");
    let err = target
        .put_if_absent("locks/x", Bytes::from_static(b"owner"))
        .await
        .expect_err("409");
    assert!(err.is_temporary(), "{err:?}");
    assert_ne!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // Through RetryTarget it is retried, then reported as persistent.
    let retried = RetryTarget::new(target).with_config(
        RetryConfig::default()
            .with_max_attempts(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2)),
    );
    let err = retried
        .put_if_absent("locks/x", Bytes::from_static(b"owner"))
        .await
        .expect_err("409 every time");
    assert_eq!(err.status(), ErrorStatus::Persistent, "{err:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 4);
}

fn status_response(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\nETag: \"e1\"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
}

fn canned_options(endpoint: String) -> TargetOptions {
    TargetOptions::default()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_credentials("AKIDEXAMPLE", "secret")
        .with_path_style(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_layers_do_not_multiply() {
    // An endpoint that always answers 503. RetryTarget makes 3 attempts; each gets
    // one quick retry inside object_store (WRAPPED_HTTP_MAX_RETRIES), not ten.
    let (endpoint, requests) =
        canned_http_server(vec![status_response("503 Service Unavailable")]).await;
    let options = canned_options(endpoint).with_retry(Some(
        RetryConfig::default()
            .with_max_attempts(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2)),
    ));
    let target = open_target("s3://bucket", &options).expect("open");
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        target.put("k", Bytes::from_static(b"x")),
    )
    .await
    .expect("a failing put gives up quickly")
    .expect_err("503 every time");
    assert_eq!(err.status(), ErrorStatus::Persistent, "{err:?}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3 * (1 + ops_storage::WRAPPED_HTTP_MAX_RETRIES),
        "requests after {:?}",
        started.elapsed()
    );

    // A user's http_max_retries applies as it is.
    let (endpoint, requests) =
        canned_http_server(vec![status_response("503 Service Unavailable")]).await;
    let options = canned_options(endpoint)
        .with_http_max_retries(0)
        .with_retry(Some(
            RetryConfig::default()
                .with_max_attempts(2)
                .with_backoff(Duration::from_millis(1), Duration::from_millis(2)),
        ));
    let target = open_target("s3://bucket", &options).expect("open");
    target
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect_err("503 every time");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_uploads_keep_object_stores_retries() {
    // RetryTarget cannot retry put_stream, so its requests keep object_store's own
    // retries: two 503s (more than WRAPPED_HTTP_MAX_RETRIES) are ridden out.
    let (endpoint, requests) = canned_http_server(vec![
        status_response("503 Service Unavailable"),
        status_response("503 Service Unavailable"),
        status_response("200 OK"),
    ])
    .await;
    let target = open_target("s3://bucket", &canned_options(endpoint)).expect("open");
    let stream = futures::stream::once(async { Ok(Bytes::from_static(b"short")) }).boxed();
    let written = target
        .put_stream("k", stream)
        .await
        .expect("object_store retries the put of a short stream");
    assert_eq!(written, 5);
    assert_eq!(requests.load(Ordering::SeqCst), 3);

    // The same two 503s fail an ordinary put's attempt, which RetryTarget retries
    // (that is what keeps the calls' object_store retries low).
    let (endpoint, requests) = canned_http_server(vec![
        status_response("503 Service Unavailable"),
        status_response("503 Service Unavailable"),
        status_response("200 OK"),
    ])
    .await;
    let options = canned_options(endpoint).with_retry(Some(
        RetryConfig::default().with_backoff(Duration::from_millis(1), Duration::from_millis(2)),
    ));
    let target = open_target("s3://bucket", &options).expect("open");
    target
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect("the second attempt succeeds");
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}
