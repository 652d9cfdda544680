//! [`Timestamp`]: the one time type of tally, with its one RFC 3339 form.
//!
//! Every time tally stores or sends (a counter's `updated_at`, a region's `last_sync`, a
//! history point) is a count of Unix milliseconds, written as RFC 3339 UTC with exactly three
//! fractional digits: `2030-10-10T12:11:42.000Z`. Fixed width means text order is time order
//! and a time read back from an answer (a history cursor) is exactly the time that was meant.
//!
//! `no_std` has no calendar library that formats without `std`, so the civil-date conversion
//! is Howard Hinnant's `days_from_civil` / `civil_from_days` (public domain, exact over the
//! proleptic Gregorian calendar), checked against the `time` crate in the tests.

use core::fmt;
use core::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// A point in time, in Unix milliseconds, between `0000-01-01T00:00:00.000Z` and
/// `9999-12-31T23:59:59.999Z` (the years RFC 3339 can write).
///
/// # Examples
///
/// ```
/// use tally_crdt::Timestamp;
///
/// let t = Timestamp::from_unix_ms(1_917_864_702_500);
/// assert_eq!(t.to_string(), "2030-10-10T12:11:42.500Z");
/// assert_eq!("2030-10-10T14:11:42.5+02:00".parse::<Timestamp>()?, t);
/// assert_eq!(serde_json::to_string(&t).unwrap(), r#""2030-10-10T12:11:42.500Z""#);
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// 1970-01-01T00:00:00.000Z.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// `0000-01-01T00:00:00.000Z`, the earliest time written.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000);
    /// `9999-12-31T23:59:59.999Z`, the latest time written.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The time `ms` milliseconds after the Unix epoch, clamped to [`MIN`](Self::MIN) ..=
    /// [`MAX`](Self::MAX).
    pub const fn from_unix_ms(ms: i64) -> Timestamp {
        if ms < Self::MIN.0 {
            Self::MIN
        } else if ms > Self::MAX.0 {
            Self::MAX
        } else {
            Timestamp(ms)
        }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// The later of two times.
    #[must_use]
    pub fn max(self, other: Timestamp) -> Timestamp {
        Ord::max(self, other)
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }

    /// `self` plus `ms` milliseconds (clamped).
    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp::from_unix_ms(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }

    /// `self` minus `ms` milliseconds (clamped).
    #[must_use]
    pub fn minus_ms(self, ms: u64) -> Timestamp {
        Timestamp::from_unix_ms(self.0.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MS_PER_DAY);
        let in_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s, ms) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1000 % 60,
            in_day % 1000,
        );
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

impl FromStr for Timestamp {
    type Err = Error;

    /// Parses RFC 3339: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (`t` and `z` accepted, a
    /// fraction of any length truncated to milliseconds).
    fn from_str(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        let bad = || Error::InvalidTime;
        let num = |from: usize, len: usize| -> Result<i64, Error> {
            let digits = b.get(from..from + len).ok_or_else(bad)?;
            digits.iter().try_fold(0i64, |acc, &c| {
                c.is_ascii_digit()
                    .then(|| acc * 10 + i64::from(c - b'0'))
                    .ok_or_else(bad)
            })
        };
        let at = |i: usize, c: u8| b.get(i).is_some_and(|x| x.eq_ignore_ascii_case(&c));
        if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
            return Err(bad());
        }
        let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        let days_in_month = match mo {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
            2 => 28,
            _ => return Err(bad()),
        };
        // A leap second (:60) is read as the last millisecond of its minute.
        if !(1..=days_in_month).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        let mut i = 19;
        let mut ms = 0;
        if at(i, b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 3 {
                    ms = ms * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return Err(bad());
            }
            for _ in (i - start)..3 {
                ms *= 10;
            }
        }
        let offset_min = if at(i, b'Z') && b.len() == i + 1 {
            0
        } else if (at(i, b'+') || at(i, b'-')) && b.len() == i + 6 && at(i + 3, b':') {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let sign = if at(i, b'-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        } else {
            return Err(bad());
        };
        let (sec, ms) = if sec == 60 { (59, 999) } else { (sec, ms) };
        let local = days_from_civil(y, mo, d) * MS_PER_DAY + ((h * 60 + mi) * 60 + sec) * 1000 + ms;
        let utc = local - offset_min * 60_000;
        if !(Self::MIN.0..=Self::MAX.0).contains(&utc) {
            return Err(bad());
        }
        Ok(Timestamp(utc))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;
        impl Visitor<'_> for TimeVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time such as 2030-10-10T12:11:42.000Z")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(TimeVisitor)
    }
}

/// A UTC calendar day, written `YYYY-MM-DD` (the date part of a [`Timestamp`]'s form).
///
/// The unit of derived unique visitors: a key derived from a client's address is salted per
/// UTC day, so it counts once per day.
///
/// # Examples
///
/// ```
/// use tally_crdt::{Day, Timestamp};
///
/// let day = Timestamp::from_unix_ms(1_917_864_702_500).day();
/// assert_eq!(day.to_string(), "2030-10-10");
/// assert_eq!("2030-10-10".parse::<Day>()?, day);
/// assert_eq!(day.start(), "2030-10-10T00:00:00Z".parse::<Timestamp>()?);
/// assert!("2030-13-01".parse::<Day>().is_err());
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i64);

impl Timestamp {
    /// The UTC day this time falls on.
    pub const fn day(self) -> Day {
        Day(self.0.div_euclid(MS_PER_DAY))
    }
}

impl Day {
    /// Its first millisecond.
    pub const fn start(self) -> Timestamp {
        Timestamp(self.0 * MS_PER_DAY)
    }

    /// Days since 1970-01-01.
    pub const fn days_since_epoch(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl FromStr for Day {
    type Err = Error;

    /// Parses `YYYY-MM-DD` exactly (a real date of years 0000-9999).
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() != 10 {
            return Err(Error::InvalidDay);
        }
        let t: Timestamp = alloc::format!("{s}T00:00:00Z")
            .parse()
            .map_err(|_| Error::InvalidDay)?;
        let day = t.day();
        // The parser accepts day 31 of a 30-day month by rolling over: refuse what does not
        // write back the same.
        if alloc::format!("{day}") != s {
            return Err(Error::InvalidDay);
        }
        Ok(day)
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DayVisitor;
        impl Visitor<'_> for DayVisitor {
            type Value = Day;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UTC day such as 2030-10-10")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Day, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(DayVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn the_one_form_has_three_fractional_digits() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_unix_ms(1_917_864_702_000).to_string(),
            "2030-10-10T12:11:42.000Z"
        );
        assert_eq!(
            Timestamp::from_unix_ms(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::from_unix_ms(i64::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::from_unix_ms(i64::MIN), Timestamp::MIN);
    }

    #[test]
    fn parses_offsets_fractions_and_leap_days() {
        let t = |s: &str| s.parse::<Timestamp>().map(Timestamp::unix_ms);
        assert_eq!(t("2030-10-10T12:11:42Z"), Ok(1_917_864_702_000));
        assert_eq!(t("2030-10-10t12:11:42.123456789z"), Ok(1_917_864_702_123));
        assert_eq!(t("2030-10-10T13:11:42.1+01:00"), Ok(1_917_864_702_100));
        assert_eq!(t("2030-10-10T11:41:42-00:30"), Ok(1_917_864_702_000));
        assert!(t("2024-02-29T00:00:00Z").is_ok());
        assert_eq!(t("2016-12-31T23:59:60Z"), Ok(1_483_228_799_999));
        for bad in [
            "",
            "2023-02-29T00:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-10-10 12:11:42Z",
            "2030-10-10T12:11:42",
            "2030-10-10T12:11:42.Z",
            "2030-10-10T24:00:00Z",
            "2030-10-10T12:11:42+1:00",
            "2030-10-10T12:11:42Zjunk",
            "0000-01-01T00:00:00+00:01",
            "+030-10-10T12:11:42Z",
        ] {
            assert_eq!(t(bad), Err(Error::InvalidTime), "{bad:?}");
        }
    }

    #[test]
    fn serde_is_the_text_form() {
        let t = Timestamp::from_unix_ms(5);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#""1970-01-01T00:00:00.005Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert!(serde_json::from_str::<Timestamp>("5").is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod against_the_time_crate {
        use super::*;
        use proptest::prelude::*;
        use time::OffsetDateTime;
        use time::format_description::well_known::Rfc3339;

        proptest! {
            #[test]
            fn format_and_parse_agree_with_time(ms in Timestamp::MIN.0..=Timestamp::MAX.0) {
                let ours = Timestamp::from_unix_ms(ms);
                let theirs = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
                let text = ours.to_string();
                let parsed = OffsetDateTime::parse(&text, &Rfc3339).unwrap();
                prop_assert_eq!(parsed, theirs);
                let theirs_text = theirs.format(&Rfc3339).unwrap();
                prop_assert_eq!(theirs_text.parse::<Timestamp>().unwrap(), ours);
                prop_assert_eq!(text.parse::<Timestamp>().unwrap(), ours);
            }
        }
    }
}
