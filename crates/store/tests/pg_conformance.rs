//! The shared conformance suite (`common/conformance.rs`) against `PgStore`, each check in a
//! fresh database of its own.
//!
//! The suite's own macro cannot skip, so this file instantiates the checks with a wrapper that
//! skips loudly when `INCIDENTLOG_TEST_PG` is unset (and fails with `CI=true`).
//! `every_conformance_check_runs_on_postgres` keeps the list in sync with the suite.

// The suite's own macro is not used here (see above).
#[allow(unused_macros, unused_imports)]
mod common;
mod pg_support;

use std::sync::Arc;

use incidentlog_store::pg::PgStore;

async fn pg_store(test: &str) -> Option<Arc<PgStore>> {
    let url = pg_support::test_database(test).await?;
    Some(Arc::new(pg_support::open(&url).await))
}

macro_rules! pg_conformance {
    ($($check:ident),* $(,)?) => {
        const CHECKS: &[&str] = &[$(stringify!($check)),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(store) = pg_store(stringify!($check)).await else {
                    return;
                };
                common::conformance::$check(store).await;
            }
        )*
    };
}

pg_conformance!(
    append_and_read_back,
    read_streams_reads_each_stream,
    read_stream_pages_slice_the_stream,
    expected_version_checks,
    one_winner_per_expected_version,
    idempotent_retries,
    idempotency_conflicts,
    never_version_only_answers_repeats,
    invalid_requests,
    append_many_is_per_request_atomic,
    append_many_requests_see_each_other,
    append_many_requests_after_a_failure_depend_on_it,
    concurrent_batches_stay_contiguous,
    read_all_paging,
    read_all_map_maps_what_read_all_reads,
    position_at_is_a_prefix,
    subscription_catch_up_then_live,
    subscription_from_the_middle,
    watch_head_follows_appends,
    verify_matches_head,
    tokens_roundtrip,
    close_refuses_appends_keeps_reads,
    restore_rebuilds_a_log_exactly,
    restores_in_flight_keep_order_time_and_atomicity,
);

#[test]
fn every_conformance_check_runs_on_postgres() {
    let suite = include_str!("common/conformance.rs");
    let missing: Vec<&str> = suite
        .lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter_map(|rest| rest.split(['<', '(']).next())
        .filter(|name| !CHECKS.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "conformance checks not run on PostgreSQL: {missing:?}"
    );
}
