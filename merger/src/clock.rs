//! The merger's one clock: every time it stamps (commits, presence, history, milestones,
//! pruning) is read here, so no module reaches into another for the time.

use std::time::{SystemTime, UNIX_EPOCH};

use tally_crdt::Timestamp;

/// Now (a clock before 1970 reads as the epoch).
pub fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix_ms(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}
