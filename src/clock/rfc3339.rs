//! `DateTime<Utc>` through serde exactly as chrono's own derive writes it (RFC 3339 with `Z`,
//! the fraction in groups of three digits, as many as it needs), only faster: chrono parses
//! with its relaxed parser, four times slower than its strict RFC 3339 one, and writes through
//! `collect_str`, which serde_json runs through its escaping writer piece by piece (one
//! `to_rfc3339_opts` string is cheaper; bincode builds that string either way; BENCHMARKS.md,
//! session 40). Every hold encodes and decodes the dates of its events and answers with a
//! view's: `#[serde(with = "crate::clock::rfc3339")]` on those fields. What the strict parser
//! refuses (a date written by hand, a year past 9999) is read by chrono's relaxed parser, as
//! before.

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, Utc};
use serde::{de, Deserializer, Serialize, Serializer};
use std::fmt;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    if (0..=9999).contains(&at.year()) {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    } else {
        at.serialize(serializer)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(Rfc3339)
}

struct Rfc3339;

impl de::Visitor<'_> for Rfc3339 {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an RFC 3339 date and time")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        DateTime::parse_from_rfc3339(text)
            .or_else(|_| text.parse::<DateTime<FixedOffset>>())
            .map(|at| at.with_timezone(&Utc))
            .map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate, TimeZone, Utc};
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast(#[serde(with = "super")] DateTime<Utc>);

    fn at(seconds: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, nanos).single().unwrap()
    }

    /// Every fraction chrono writes (none, milli-, micro-, nanoseconds) and a leap second.
    fn samples() -> Vec<DateTime<Utc>> {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        vec![
            at(0, 0),
            at(1_764_000_000, 120_000_000),
            at(1_764_000_000, 123_456_000),
            at(1_764_000_000, 123_456_789),
            at(-62_167_219_200, 0),           // 0000-01-01
            at(253_402_300_799, 999_999_000), // 9999-12-31
            leap,
        ]
    }

    /// Bytes for bytes what chrono's derive writes, in JSON and in bincode, and read back.
    #[test]
    fn writes_what_chrono_writes_and_reads_it_back() {
        let bincode = bincode::config::standard();
        for sample in samples().into_iter().chain([at(400_000_000_000, 5)]) {
            let ours = serde_json::to_string(&Fast(sample)).unwrap();
            assert_eq!(ours, serde_json::to_string(&sample).unwrap());
            assert_eq!(serde_json::from_str::<Fast>(&ours).unwrap(), Fast(sample));
            let ours = bincode::serde::encode_to_vec(Fast(sample), bincode).unwrap();
            assert_eq!(
                ours,
                bincode::serde::encode_to_vec(sample, bincode).unwrap()
            );
            let (read, _): (Fast, _) = bincode::serde::decode_from_slice(&ours, bincode).unwrap();
            assert_eq!(read, Fast(sample));
        }
    }

    /// What chrono's relaxed parser reads and the strict one does not is still read.
    #[test]
    fn reads_what_chrono_reads() {
        for text in [
            "2026-12-04 10:00:00Z",
            "2026-12-04T10:00:00+02:00",
            "2026-12-04t10:00:00z",
        ] {
            let json = format!("\"{text}\"");
            assert_eq!(
                serde_json::from_str::<Fast>(&json).unwrap().0,
                serde_json::from_str::<DateTime<Utc>>(&json).unwrap(),
                "{text}"
            );
        }
        assert!(serde_json::from_str::<Fast>("\"yesterday\"").is_err());
    }

    proptest! {
        #[test]
        fn any_date_of_four_digit_years_round_trips_as_chrono_writes_it(
            seconds in -62_167_219_200i64..253_402_300_800,
            nanos in prop_oneof![Just(0u32), (0u32..1_000).prop_map(|m| m * 1_000_000),
                                 (0u32..1_000_000).prop_map(|u| u * 1_000), 0u32..1_000_000_000],
        ) {
            let sample = at(seconds, nanos);
            let ours = serde_json::to_string(&Fast(sample)).unwrap();
            prop_assert_eq!(&ours, &serde_json::to_string(&sample).unwrap());
            prop_assert_eq!(serde_json::from_str::<Fast>(&ours).unwrap(), Fast(sample));
        }
    }
}
