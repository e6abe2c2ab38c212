//! The shared target conformance suite against every store this crate builds:
//! a local directory, memory, and a real S3 API (moto) on loopback.

use ops_core::testkit::target::conformance;
use ops_storage::s3_test_server::S3TestServer;
use ops_storage::{MultipartOptions, TargetOptions, open_target};

const MIB: u64 = 1024 * 1024;

/// Small parts so that the suite's multi-MiB streams span several parts.
fn small_parts(part_size: u64) -> MultipartOptions {
    MultipartOptions::default().with_part_size(part_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory that does not exist yet: created by the first write.
    let root = dir.path().join("not/yet/there");
    let url = root.to_string_lossy().into_owned();
    let target = open_target(&url, &TargetOptions::default()).expect("open local");
    assert!(!target.is_remote());
    assert!(!root.exists(), "opening must not create the directory");
    conformance(target.as_ref()).await;
    assert!(root.is_dir());

    let file_url = format!("file://{}", root.display());
    let options = TargetOptions::default().with_multipart(small_parts(MIB));
    let target = open_target(&file_url, &options).expect("open file url");
    conformance(target.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let target = open_target("memory://", &TargetOptions::default()).expect("open memory");
    conformance(target.as_ref()).await;
    let options = TargetOptions::default().with_multipart(small_parts(MIB));
    let target = open_target("memory://", &options).expect("open memory");
    conformance(target.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_on_moto() {
    let server = S3TestServer::start_async()
        .await
        .expect("start the S3 test server");
    // 5 MiB is S3's (and this moto's) smallest part: the 6–7 MiB streams of the
    // suite become two-part uploads.
    let options = server.options().with_multipart(small_parts(5 * MIB));
    let target = open_target(&server.url("dbops-test"), &options).expect("open s3");
    assert!(target.is_remote());
    conformance(target.as_ref()).await;

    // Under a prefix, in a second bucket.
    server.create_bucket("second").expect("create bucket");
    let target =
        open_target(&format!("{}/some/prefix", server.url("second")), &options).expect("open");
    conformance(target.as_ref()).await;
}
