//! [`Config`]: the worker's vars and secrets (`wrangler.toml` `[vars]`, `.dev.vars`,
//! `wrangler secret put`), parsed and checked once.

use crate::internal::Form;

/// Every setting of the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the merger (`MERGER_URL`), without a trailing slash.
    pub merger_url: String,
    /// Bearer token for the merger's `/v1/sync` and `/v1/read` (`SYNC_TOKEN`, a secret).
    pub sync_token: String,
    /// The key session tokens are signed with (`SESSION_KEY`, a secret of at least 16
    /// characters, not the sync token: the merger holds that).
    pub session_key: String,
    /// The key session tokens were signed with before the current one (`SESSION_KEY_PREVIOUS`,
    /// optional): its tokens are still read while a key rotates.
    pub session_key_previous: Option<String>,
    /// How long dirty counters wait before a sync pass (`SYNC_INTERVAL_MS`, default 2000).
    pub sync_interval_ms: u64,
    /// How long a cached global value serves reads before a background refresh
    /// (`READ_TTL_MS`, default the sync interval).
    pub read_ttl_ms: u64,
    /// Durable Objects per region; counters are hashed over them (`PARTITIONS`, default 16).
    pub partitions: u32,
    /// Objects of its region one counter's hits are spread over, for hot counters
    /// (`SPREAD`, default 4).
    pub spread: u32,
    /// Counters an object keeps in its in-memory read cache (`CACHE_COUNTERS`, default 10000).
    pub cache_counters: usize,
    /// How long the Worker answers reads from its own isolate's memory before asking the
    /// object again (`EDGE_CACHE_MS`, default 1000; 0 turns the isolate cache off).
    pub edge_cache_ms: u64,
    /// Counters the Worker keeps per isolate (`EDGE_CACHE_COUNTERS`, default 10000).
    pub edge_cache_counters: usize,
    /// Period of the anti-entropy sweep that re-sends every counter's totals
    /// (`ANTI_ENTROPY_MS`, default one hour; 0 turns it off).
    pub anti_entropy_ms: u64,
    /// Largest delta of a public `PUT` on a counter, without the write key
    /// (`PUBLIC_MAX_DELTA`, default 1; 0: every counter write needs the key).
    pub public_max_delta: u64,
    /// Whether gauges may be written without the write key (`PUBLIC_GAUGES`, default false).
    pub public_gauges: bool,
    /// The application's write key (`WRITE_KEY`, a secret, at least 16 characters): its own
    /// backend presents it for larger deltas and gauge writes. `None`: nobody can.
    pub write_key: Option<String>,
    /// Whether the `X-Tally-Region` header may set the region (`ALLOW_REGION_OVERRIDE`;
    /// for `wrangler dev` and tests only, never in production).
    pub allow_region_override: bool,
    /// Longest wait for the merger's answer (`SYNC_TIMEOUT_MS`, default 5000).
    pub sync_timeout_ms: u64,
    /// Longest a hit on the exact path (its counter near a milestone) waits for the merger
    /// to commit it before answering `Tally-Milestone: pending` (`EXACT_WAIT_MS`, default
    /// 2000; 0 turns the exact path off: winners then learn it from their receipts only).
    pub exact_wait_ms: u64,
    /// Longest backoff between failed merger calls (`MAX_BACKOFF_MS`, default 60000); also
    /// how long syncs keep the version a merger a release behind took before the newest is
    /// tried again.
    pub max_backoff_ms: u64,
    /// Age, counted from its first hit, after which an object's incarnation rotates at its
    /// first clean moment and the old one is retired at the merger (`ROTATE_MS`, default one
    /// day; 0: never).
    pub rotate_ms: u64,
    /// How long a rebased row of a counter nobody counts any more (reset or deleted) stays
    /// in storage before it is deleted (`RECLAIM_AFTER_MS`, default seven days; 0: never):
    /// until then the sweep re-sends its frame, so a merger restored from a backup up to that
    /// old gets back what it reclaimed. Also how long after a reset a row re-sends its
    /// object's share of it (`Row::cut`), which heals a merger restored from before it.
    pub reclaim_after_ms: u64,
    /// `PRESENCE_TTL_MS`: a viewer's lease; a session not renewed within it stops counting.
    pub presence_ttl_ms: u64,
    /// `PRESENCE_MAX_SESSIONS`: live sessions (leases and sockets) one presence object holds
    /// at most; a join beyond is refused with 429.
    pub presence_max_sessions: usize,
    /// `PRESENCE_PUSH_MS`: shortest time between two count pushes to an id's sockets.
    pub presence_push_ms: u64,
    /// `UNIQUE_SALT` (secret): the key from which each UTC day's salt for derived visitor keys
    /// is made. Without it, a unique hit must carry its own visitor key.
    pub unique_salt: Option<String>,
    /// `ALLOWED_ORIGINS`: the web origins whose pages may call the edge (default `*`, any).
    pub allowed_origins: AllowedOrigins,
    /// `OBJECT_MESSAGES`: the form of the Worker's messages to its counter objects, `v1` (the
    /// default, compact) or `json` (for the first deploy over a release whose objects know only
    /// JSON: see [`crate::internal`]).
    pub object_messages: Form,
}

/// The web origins whose pages may call the edge (`ALLOWED_ORIGINS`): `*`, or a
/// comma-separated list such as `https://example.com,https://www.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Any origin: every answer carries `Access-Control-Allow-Origin: *`.
    Any,
    /// These origins only (lowercase, as browsers send them): a request whose `Origin` is
    /// another is refused (`403 origin_not_allowed`, nothing counted), one from a listed origin
    /// is answered with that origin in `Access-Control-Allow-Origin` (and `Vary: Origin`), and
    /// one without an `Origin` (a server, not a page) is served without CORS headers.
    Only(Vec<String>),
}

/// The most origins `ALLOWED_ORIGINS` lists.
pub const MAX_ALLOWED_ORIGINS: usize = 64;

impl AllowedOrigins {
    /// Parses the setting: `*`, or origins `scheme://host[:port]` (http or https; no path,
    /// query or trailing slash) separated by commas.
    ///
    /// # Errors
    ///
    /// What is wrong with it, for the configuration error.
    pub fn parse(text: &str) -> Result<AllowedOrigins, &'static str> {
        let text = text.trim();
        if text == "*" {
            return Ok(AllowedOrigins::Any);
        }
        let mut origins = Vec::new();
        for origin in text.split(',').map(str::trim) {
            let origin = origin.to_ascii_lowercase();
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or("each origin starts with https:// or http://")?;
            let (name, port) = host.rsplit_once(':').unwrap_or((host, ""));
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
            if !name_ok || !port_ok || (host.contains(':') && port.is_empty()) {
                return Err("an origin is scheme://host[:port], no path, query or trailing slash");
            }
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        if origins.len() > MAX_ALLOWED_ORIGINS {
            return Err("at most 64 origins");
        }
        Ok(AllowedOrigins::Only(origins))
    }

    /// Whether a page of `origin` (a request's `Origin` header) may call the edge.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::Only(origins) => origins.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// A missing or malformed setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A setting does not parse or is out of range.
    #[error("{name} = {value:?}: {why}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        why: &'static str,
    },
}

/// Shortest sync token accepted (the merger requires the same).
const MIN_TOKEN_LEN: usize = 16;

impl Config {
    /// Reads every setting through `get` (the Worker's `Env`, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let merger_url = get("MERGER_URL").ok_or(ConfigError::Missing("MERGER_URL"))?;
        if !(merger_url.starts_with("http://") || merger_url.starts_with("https://")) {
            return Err(invalid(
                "MERGER_URL",
                merger_url,
                "an http:// or https:// URL",
            ));
        }
        // A secret is at least 16 characters; an optional one may be absent or empty.
        let checked = |name: &'static str, key: String| {
            if key.len() < MIN_TOKEN_LEN {
                Err(invalid(name, "<hidden>".into(), "at least 16 characters"))
            } else {
                Ok(key)
            }
        };
        let required =
            |name: &'static str| checked(name, get(name).ok_or(ConfigError::Missing(name))?);
        let secret = |name: &'static str| {
            get(name)
                .filter(|k| !k.is_empty())
                .map(|k| checked(name, k))
                .transpose()
        };
        let sync_token = required("SYNC_TOKEN")?;
        let session_key = required("SESSION_KEY")?;
        if session_key == sync_token {
            return Err(invalid(
                "SESSION_KEY",
                "<hidden>".into(),
                "a key of its own, not SYNC_TOKEN (the merger holds that)",
            ));
        }
        let session_key_previous = secret("SESSION_KEY_PREVIOUS")?;
        let number = |name: &'static str, default: u64, range: std::ops::RangeInclusive<u64>| {
            match get(name) {
                None => Ok(default),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(v) if range.contains(&v) => Ok(v),
                    _ => Err(invalid(name, text, "a whole number in range")),
                },
            }
        };
        let sync_interval_ms = number("SYNC_INTERVAL_MS", 2000, 10..=3_600_000)?;
        let read_ttl_ms = number("READ_TTL_MS", sync_interval_ms, 0..=3_600_000)?;
        let partitions = number("PARTITIONS", 16, 1..=4096)?;
        let spread = number("SPREAD", 4, 1..=64)?;
        let cache_counters = number("CACHE_COUNTERS", 10_000, 16..=1_000_000)?;
        let edge_cache_ms = number("EDGE_CACHE_MS", 1000, 0..=60_000)?;
        let edge_cache_counters = number("EDGE_CACHE_COUNTERS", 10_000, 16..=1_000_000)?;
        let anti_entropy_ms = number("ANTI_ENTROPY_MS", 3_600_000, 0..=604_800_000)?;
        if anti_entropy_ms != 0 && anti_entropy_ms < 1000 {
            return Err(invalid(
                "ANTI_ENTROPY_MS",
                anti_entropy_ms.to_string(),
                "0 (off) or at least 1000",
            ));
        }
        let public_max_delta = number("PUBLIC_MAX_DELTA", 1, 0..=crate::api::MAX_DELTA)?;
        let sync_timeout_ms = number("SYNC_TIMEOUT_MS", 5000, 100..=60_000)?;
        let exact_wait_ms = number("EXACT_WAIT_MS", 2000, 0..=60_000)?;
        let max_backoff_ms = number("MAX_BACKOFF_MS", 60_000, 1000..=3_600_000)?;
        let rotate_ms = number("ROTATE_MS", 86_400_000, 0..=31_536_000_000)?;
        if rotate_ms != 0 && rotate_ms < 1000 {
            return Err(invalid(
                "ROTATE_MS",
                rotate_ms.to_string(),
                "0 (never) or at least 1000",
            ));
        }
        let reclaim_after_ms = number("RECLAIM_AFTER_MS", 604_800_000, 0..=31_536_000_000)?;
        let presence_ttl_ms = number(
            "PRESENCE_TTL_MS",
            30_000,
            1000..=tally_crdt::MAX_PRESENCE_TTL_MS,
        )?;
        let presence_max_sessions = number("PRESENCE_MAX_SESSIONS", 10_000, 1..=100_000)?;
        let presence_push_ms = number("PRESENCE_PUSH_MS", 250, 0..=60_000)?;
        let unique_salt = secret("UNIQUE_SALT")?;
        let allowed_origins = match get("ALLOWED_ORIGINS") {
            None => AllowedOrigins::Any,
            Some(text) => {
                AllowedOrigins::parse(&text).map_err(|why| invalid("ALLOWED_ORIGINS", text, why))?
            }
        };
        let flag = |name: &'static str| match get(name).as_deref().map(str::trim) {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(invalid(name, other.into(), "true or false")),
        };
        let object_messages = match get("OBJECT_MESSAGES").as_deref().map(str::trim) {
            None | Some("v1") => Form::V1,
            Some("json") => Form::Json,
            Some(other) => return Err(invalid("OBJECT_MESSAGES", other.into(), "v1 or json")),
        };
        let write_key = secret("WRITE_KEY")?;
        let narrow = |v: u64| u32::try_from(v).expect("bounded by its range above");
        Ok(Config {
            merger_url: merger_url.trim_end_matches('/').to_owned(),
            sync_token,
            session_key,
            session_key_previous,
            sync_interval_ms,
            read_ttl_ms,
            partitions: narrow(partitions),
            spread: narrow(spread),
            cache_counters: usize::try_from(cache_counters).expect("bounded by its range above"),
            edge_cache_ms,
            edge_cache_counters: usize::try_from(edge_cache_counters)
                .expect("bounded by its range above"),
            anti_entropy_ms,
            public_max_delta,
            public_gauges: flag("PUBLIC_GAUGES")?,
            write_key,
            allow_region_override: flag("ALLOW_REGION_OVERRIDE")?,
            sync_timeout_ms,
            exact_wait_ms,
            max_backoff_ms,
            rotate_ms,
            reclaim_after_ms,
            presence_ttl_ms,
            presence_max_sessions: usize::try_from(presence_max_sessions)
                .expect("bounded by its range above"),
            presence_push_ms,
            unique_salt,
            allowed_origins,
            object_messages,
        })
    }
}

fn invalid(name: &'static str, value: String, why: &'static str) -> ConfigError {
    ConfigError::Invalid { name, value, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 3] = [
        ("MERGER_URL", "http://127.0.0.1:8790/"),
        ("SYNC_TOKEN", "0123456789abcdef"),
        ("SESSION_KEY", "fedcba9876543210"),
    ];

    #[test]
    fn defaults() {
        let c = config(&BASE).unwrap();
        assert_eq!(c.merger_url, "http://127.0.0.1:8790");
        assert_eq!(
            (c.sync_interval_ms, c.read_ttl_ms, c.partitions, c.spread),
            (2000, 2000, 16, 4)
        );
        assert_eq!(
            (c.public_max_delta, c.public_gauges, c.write_key),
            (1, false, None)
        );
        assert_eq!((c.cache_counters, c.anti_entropy_ms), (10_000, 3_600_000));
        assert_eq!((c.edge_cache_ms, c.edge_cache_counters), (1000, 10_000));
        assert_eq!(c.rotate_ms, 86_400_000);
        assert_eq!(c.reclaim_after_ms, 604_800_000);
        assert!(!c.allow_region_override);
    }

    #[test]
    fn read_ttl_defaults_to_the_sync_interval() {
        let c = config(&[BASE[0], BASE[1], BASE[2], ("SYNC_INTERVAL_MS", "500")]).unwrap();
        assert_eq!(c.read_ttl_ms, 500);
    }

    #[test]
    fn rotation_can_be_turned_off() {
        let c = config(&[BASE[0], BASE[1], BASE[2], ("ROTATE_MS", "0")]).unwrap();
        assert_eq!(c.rotate_ms, 0);
    }

    #[test]
    fn missing_and_malformed_settings_are_named() {
        assert_eq!(
            config(&[BASE[1], BASE[2]]),
            Err(ConfigError::Missing("MERGER_URL"))
        );
        assert_eq!(
            config(&[BASE[0], BASE[2]]),
            Err(ConfigError::Missing("SYNC_TOKEN"))
        );
        assert_eq!(
            config(&[BASE[0], BASE[1]]),
            Err(ConfigError::Missing("SESSION_KEY"))
        );
        assert!(matches!(
            config(&[BASE[0], BASE[1], ("SESSION_KEY", "0123456789abcdef")]),
            Err(ConfigError::Invalid {
                name: "SESSION_KEY",
                ..
            })
        ));
        assert!(matches!(
            config(&[("MERGER_URL", "ftp://x"), BASE[1], BASE[2]]),
            Err(ConfigError::Invalid {
                name: "MERGER_URL",
                ..
            })
        ));
        assert!(matches!(
            config(&[BASE[0], ("SYNC_TOKEN", "short"), BASE[2]]),
            Err(ConfigError::Invalid {
                name: "SYNC_TOKEN",
                ..
            })
        ));
        for (name, bad) in [
            ("PARTITIONS", "0"),
            ("SPREAD", "x"),
            ("ANTI_ENTROPY_MS", "10"),
            ("PUBLIC_MAX_DELTA", "1000001"),
            ("WRITE_KEY", "short"),
            ("SESSION_KEY", "short"),
            ("SESSION_KEY_PREVIOUS", "short"),
            ("PUBLIC_GAUGES", "maybe"),
            ("SYNC_INTERVAL_MS", "-1"),
            ("ALLOW_REGION_OVERRIDE", "yes"),
            ("ROTATE_MS", "500"),
            ("OBJECT_MESSAGES", "v2"),
        ] {
            let err = config(&[BASE[0], BASE[1], BASE[2], (name, bad)]).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}={bad}: {err}"
            );
        }
    }

    #[test]
    fn object_messages_are_compact_unless_json_is_asked_for() {
        assert_eq!(config(&BASE).unwrap().object_messages, Form::V1);
        for (text, form) in [("v1", Form::V1), (" json ", Form::Json)] {
            let c = config(&[BASE[0], BASE[1], BASE[2], ("OBJECT_MESSAGES", text)]).unwrap();
            assert_eq!(c.object_messages, form, "{text}");
        }
    }

    #[test]
    fn allowed_origins_are_any_by_default_or_a_checked_list() {
        let base: Vec<(&str, &str)> = BASE.to_vec();
        assert_eq!(config(&base).unwrap().allowed_origins, AllowedOrigins::Any);
        let mut listed = base.clone();
        listed.push((
            "ALLOWED_ORIGINS",
            " https://Example.com, http://localhost:8080,https://example.com",
        ));
        let origins = config(&listed).unwrap().allowed_origins;
        assert_eq!(
            origins,
            AllowedOrigins::Only(vec![
                "https://example.com".into(),
                "http://localhost:8080".into()
            ])
        );
        assert!(origins.allows("https://example.com"));
        assert!(origins.allows("HTTPS://EXAMPLE.COM"));
        assert!(origins.allows("http://localhost:8080"));
        assert!(!origins.allows("https://example.com.evil.test"));
        assert!(!origins.allows("http://example.com"));
        assert!(!origins.allows("null"));
        for bad in [
            "",
            "example.com",
            "https://example.com/",
            "https://example.com/page",
            "https://example.com:",
            "https://example.com:0",
            "https://example.com:99999",
            "ftp://example.com",
            "https://exa mple.com",
            "https://*.example.com",
            "*,https://example.com",
        ] {
            let mut with = base.clone();
            with.push(("ALLOWED_ORIGINS", bad));
            assert!(
                matches!(
                    config(&with),
                    Err(ConfigError::Invalid {
                        name: "ALLOWED_ORIGINS",
                        ..
                    })
                ),
                "{bad:?} is refused"
            );
        }
    }
}
