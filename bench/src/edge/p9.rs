//! P9: how long a hit takes to be seen, under the P6 load. While the mixed phase runs, a
//! probe starts every [`EVERY`]: one hit in region `eu` on a counter of its own (with the write
//! key, so no budget refuses it), then it polls, every [`POLL`], the merger's
//! `GET /v1/counters/{id}` until it holds the hit, and the edge in region `us` (another region's
//! objects, which learn of the counter from the merger) until it shows it. Each probe is bounded
//! by [`LIMIT`]; one that does not see its hit within it counts as not seen.

use std::time::{Duration, Instant};

use tally_e2e::WRITE_KEY;

/// How often a probe starts.
pub const EVERY: Duration = Duration::from_millis(500);
/// How often a probe asks.
pub const POLL: Duration = Duration::from_millis(100);
/// The longest a probe waits for its hit to be seen.
pub const LIMIT: Duration = Duration::from_secs(30);
/// Each request's timeout.
const REQUEST: Duration = Duration::from_secs(10);

/// What the probes saw: seconds from a hit's answer until the merger held it, and until a
/// reader in another region saw it; and the hits not seen within [`LIMIT`] by each.
#[derive(Debug, Default)]
pub struct Seen {
    /// Hit answered → the merger's count includes it, seconds.
    pub to_merger: Vec<f64>,
    /// Hit answered → an edge read in another region includes it, seconds.
    pub to_other_region: Vec<f64>,
    /// Probes whose hit the merger did not hold within the limit.
    pub merger_missed: usize,
    /// Probes whose hit the other region did not show within the limit.
    pub region_missed: usize,
    /// Probes whose hit was not answered 2xx (not measured).
    pub failed: usize,
}

/// Runs probes until `until`, then waits for the last to end.
pub async fn run(http: &reqwest::Client, edge: &str, merger: &str, until: Instant) -> Seen {
    let mut probes = Vec::new();
    let mut k = 0_u32;
    while Instant::now() < until {
        k += 1;
        let (http, edge, merger) = (http.clone(), edge.to_owned(), merger.to_owned());
        probes.push(tokio::spawn(async move {
            probe(&http, &edge, &merger, &format!("p9-{k}")).await
        }));
        tokio::time::sleep(EVERY).await;
    }
    let mut seen = Seen::default();
    for probe in probes {
        match probe.await {
            Ok(Some((merger, region))) => {
                match merger {
                    Some(s) => seen.to_merger.push(s),
                    None => seen.merger_missed += 1,
                }
                match region {
                    Some(s) => seen.to_other_region.push(s),
                    None => seen.region_missed += 1,
                }
            }
            Ok(None) | Err(_) => seen.failed += 1,
        }
    }
    seen
}

/// One probe: `None` if the hit failed; else the seconds until the merger and another region
/// saw it (`None` for one that did not within [`LIMIT`]).
async fn probe(
    http: &reqwest::Client,
    edge: &str,
    merger: &str,
    id: &str,
) -> Option<(Option<f64>, Option<f64>)> {
    let hit = http
        .put(format!("{edge}/{id}/counter"))
        .header("X-Tally-Region", "eu")
        .header("Authorization", format!("Bearer {WRITE_KEY}"))
        .timeout(REQUEST)
        .send()
        .await
        .ok()?;
    if !hit.status().is_success() {
        return None;
    }
    let answered = Instant::now();
    let (mut to_merger, mut to_region) = (None, None);
    while (to_merger.is_none() || to_region.is_none()) && answered.elapsed() < LIMIT {
        if to_merger.is_none() && count(http.get(format!("{merger}/v1/counters/{id}"))).await >= 1 {
            to_merger = Some(answered.elapsed().as_secs_f64());
        }
        if to_region.is_none()
            && count(
                http.get(format!("{edge}/{id}/counter"))
                    .header("X-Tally-Region", "us"),
            )
            .await
                >= 1
        {
            to_region = Some(answered.elapsed().as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
    Some((to_merger, to_region))
}

/// The count a read answers; 0 when it fails.
async fn count(request: reqwest::RequestBuilder) -> i128 {
    let Ok(response) = request.timeout(REQUEST).send().await else {
        return 0;
    };
    let Ok(body) = response.json::<serde_json::Value>().await else {
        return 0;
    };
    body.get("count").and_then(tally_e2e::count_of).unwrap_or(0)
}
