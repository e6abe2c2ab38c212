//! The embedding example, run as a test: `examples/examples/embed.rs` is compiled into
//! this test as it is, so the example a team copies from cannot rot unnoticed.

#[path = "../../examples/examples/embed.rs"]
#[allow(dead_code)] // its `main` is for `cargo run --example embed`
mod embed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_does_the_whole_job() {
    if let Err(e) = embed::run().await {
        panic!("the embedding example failed: {e}");
    }
}
