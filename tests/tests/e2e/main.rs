//! The end-to-end tests, in one test binary (one build and link instead of one per area): a
//! module per area, each starting the real merger binary and, for most, the real worker under
//! `wrangler dev` on loopback (the harness is the `tally-e2e` library). `scripts/test.sh` runs
//! the areas in two lanes with name filters; run one by hand with
//! `cargo test -p tally-e2e --test e2e -- milestones::`.

mod backup;
mod client;
mod contract;
mod dashboard;
mod edge;
mod edge_paths;
mod hostile;
mod milestones;
mod nemesis;
mod postgres;
mod presence;
mod reliability;
mod reset;
mod retire;
mod rolling;
mod unique;
