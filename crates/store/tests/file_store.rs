//! Tests of the file store: the shared conformance suite plus file-specific ones
//! (recovery, corruption, fault injection, crash drill, golden log).

mod common;

use std::sync::Arc;

use incidentlog_store::{FileStore, OpenOptions};

async fn file_store() -> (Arc<FileStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OpenOptions::new(dir.path());
    // Small segments so every check also crosses segment boundaries.
    opts.segment_size = 4096;
    (Arc::new(FileStore::open(&opts).await.unwrap()), dir)
}

common::conformance::conformance_suite!(file_store);
