//! The merger's integration tests, in one test binary (one build and link instead of one per
//! file): a module per area, with the helpers they share in `common`. Run one area with a
//! filter, e.g. `cargo test -p tally-merger --test it api::`.

mod common;

mod api;
mod backup;
mod binary;
mod bounded;
mod carries;
mod frozen;
mod group_commit;
mod history;
mod idempotence;
mod import;
mod lattice;
mod milestones;
mod openapi;
mod postgres_store;
mod presence_unique;
mod read;
mod regions;
mod replica_pruning;
mod reset;
mod retire;
mod store_contract;
mod versions;
