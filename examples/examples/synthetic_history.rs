//! Gives a repository a synthetic history: index entries for many chunks, as years
//! of backups would leave them, without moving data (`bench/scale.sh` uses it to
//! measure what grows with a repository).
//!
//! ```sh
//! DBOPS_PASSWORD=… cargo run --release --example synthetic_history -- /path/to/repo 10000000
//! ```

use ops_core::repo::Repository;
use ops_core::{Result, Secret};
use ops_storage::{TargetOptions, open_target};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(chunks)) = (args.next(), args.next()) else {
        eprintln!("usage: synthetic_history REPOSITORY CHUNKS [PER_PACK]");
        std::process::exit(2);
    };
    let chunks: u64 = chunks
        .parse()
        .map_err(|_| ops_core::Error::invalid("CHUNKS must be a number"))?;
    let per_pack: u32 = args.next().and_then(|p| p.parse().ok()).unwrap_or(2000);
    let password = std::env::var("DBOPS_PASSWORD").ok().map(Secret::new);
    let repo = Repository::open(
        open_target(&url, &TargetOptions::default())?,
        password.as_ref(),
    )
    .await?;
    ops_core::testkit::scale::add_synthetic_index(&repo, chunks, per_pack, 1).await?;
    println!("added {chunks} synthetic chunk entries to {url}");
    Ok(())
}
