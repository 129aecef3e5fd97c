//! The few X.509 facts the Director reports: validity period and subject alternative names.
//!
//! rustls verifies certificates and matches keys, but does not expose dates or IP names, so this
//! module walks just enough DER to read them. It is best-effort: nothing is refused because of it
//! (see [`crate::tls::summaries`]).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the Director reports about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// IP addresses of the subject alternative name extension.
    pub ip_addresses: Vec<IpAddr>,
}

/// Certificates expiring sooner than this many seconds (7 days) are warned about.
pub const EXPIRY_WARNING_SECS: i64 = 7 * 24 * 3600;

/// Where a certificate stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Its not-before time is still to come.
    NotYetValid,
    /// Its not-after time has passed.
    Expired,
    /// Valid, but for less than [`EXPIRY_WARNING_SECS`] more.
    ExpiresSoon,
    /// Valid for longer than that.
    Valid,
}

impl CertSummary {
    /// Where the certificate stands at `now` (Unix seconds).
    pub fn validity(&self, now: i64) -> Validity {
        if self.not_after < now {
            Validity::Expired
        } else if self.not_before > now {
            Validity::NotYetValid
        } else if self.not_after - now < EXPIRY_WARNING_SECS {
            Validity::ExpiresSoon
        } else {
            Validity::Valid
        }
    }

    /// Every name the certificate is valid for, DNS names first.
    pub fn names(&self) -> Vec<String> {
        self.dns_names
            .iter()
            .cloned()
            .chain(self.ip_addresses.iter().map(IpAddr::to_string))
            .collect()
    }
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xA0;
const EXTENSIONS: u8 = 0xA3;
const DNS_NAME: u8 = 0x82;
const IP_ADDRESS: u8 = 0x87;
/// 2.5.29.17, subjectAltName.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];

/// Reads the validity and subject alternative names of a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary, String> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    let (_serial, _, rest) = tlv(rest)?;
    let (_signature, _, rest) = tlv(rest)?;
    let (_issuer, _, rest) = tlv(rest)?;
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (not_before, validity) = time(validity)?;
    let (not_after, _) = time(validity)?;
    let (_subject, _, public_key) = tlv(rest)?;
    let (_, _, mut rest) = tlv(public_key)?;
    let mut summary = CertSummary {
        not_before,
        not_after,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
    };
    while !rest.is_empty() {
        let (tag, content, next) = tlv(rest)?;
        if tag == EXTENSIONS {
            read_subject_alt_names(content, &mut summary)?;
        }
        rest = next;
    }
    Ok(summary)
}

fn read_subject_alt_names(extensions: &[u8], summary: &mut CertSummary) -> Result<(), String> {
    let (mut list, _) = expect(extensions, SEQUENCE)?;
    while !list.is_empty() {
        let (extension, next) = expect(list, SEQUENCE)?;
        list = next;
        let (oid, mut fields) = expect(extension, OID)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if fields.first() == Some(&0x01) {
            fields = tlv(fields)?.2;
        }
        let (value, _) = expect(fields, OCTET_STRING)?;
        let (mut names, _) = expect(value, SEQUENCE)?;
        while !names.is_empty() {
            let (tag, content, next) = tlv(names)?;
            names = next;
            match tag {
                DNS_NAME => summary
                    .dns_names
                    .push(String::from_utf8_lossy(content).into_owned()),
                IP_ADDRESS => summary.ip_addresses.extend(ip_address(content)),
                _ => {}
            }
        }
    }
    Ok(())
}

fn ip_address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// One DER element: (tag, content, what follows).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let malformed = || "malformed DER".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(malformed)?;
    let (&first, rest) = rest.split_first().ok_or_else(malformed)?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(malformed());
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(malformed());
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

fn expect(input: &[u8], wanted: u8) -> Result<(&[u8], &[u8]), String> {
    match tlv(input)? {
        (tag, content, rest) if tag == wanted => Ok((content, rest)),
        (tag, _, _) => Err(format!(
            "unexpected DER tag {tag:#04x}, wanted {wanted:#04x}"
        )),
    }
}

/// A UTCTime or GeneralizedTime ("Z" only, as RFC 5280 requires) as Unix seconds.
fn time(input: &[u8]) -> Result<(i64, &[u8]), String> {
    let (tag, content, rest) = tlv(input)?;
    let text = std::str::from_utf8(content).map_err(|_| "time is not ASCII".to_string())?;
    let digits = text
        .strip_suffix('Z')
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("unsupported time {text:?}"))?;
    let number = |range: std::ops::Range<usize>| digits[range].parse::<i64>().unwrap_or(0);
    let (year, offset) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = number(0..2);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4), 4),
        _ => return Err(format!("unsupported time {text:?}")),
    };
    let field = |i: usize| number(offset + 2 * i..offset + 2 * i + 2);
    let days = days_from_civil(year, field(0), field(1));
    let seconds = days * 86_400 + field(2) * 3_600 + field(3) * 60 + field(4);
    Ok((seconds, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Unix seconds as the date and time in UTC: year, month, day, hour, minute, second.
fn civil(unix: i64) -> [i64; 6] {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let era = (days + 719_468).div_euclid(146_097);
    let day_of_era = days + 719_468 - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    [
        year,
        month,
        day,
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    ]
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(unix: i64) -> String {
    let [year, month, day, hour, minute, second] = civil(unix);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// `time` as a Kubernetes MicroTime: RFC 3339 in UTC with six fractional digits
/// (`2026-12-02T16:00:00.123456Z`).
pub fn micro_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let unix = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let [year, month, day, hour, minute, second] = civil(unix);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:06}Z",
        since.subsec_micros()
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    #[test]
    fn micro_time_has_six_fractional_digits_in_utc() {
        let time = UNIX_EPOCH + std::time::Duration::from_micros(1_796_227_200_123_456);
        assert_eq!(micro_time(time), "2026-12-02T16:00:00.123456Z");
        assert_eq!(micro_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    fn certificate(names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_validity_and_names() {
        let der = certificate(
            &["allocator.example", "10.0.0.7", "::1"],
            (2024, 2, 29),
            (2051, 1, 1),
        );
        let summary = summarize(&der).unwrap();
        assert_eq!(summary.not_before, 1_709_164_800);
        assert_eq!(format_utc(summary.not_before), "2024-02-29 00:00:00 UTC");
        assert_eq!(format_utc(summary.not_after), "2051-01-01 00:00:00 UTC");
        assert_eq!(summary.names(), ["allocator.example", "10.0.0.7", "::1"]);
    }

    #[test]
    fn certificate_without_names() {
        let der = certificate(&[], (1999, 12, 31), (2000, 1, 1));
        let summary = summarize(&der).unwrap();
        assert_eq!(format_utc(summary.not_before), "1999-12-31 00:00:00 UTC");
        assert!(summary.names().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(summarize(&[]).is_err());
        assert!(summarize(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(summarize(&[0x30, 0x03, 0x02, 0x01]).is_err());
    }

    #[test]
    fn formats_epoch_and_leap_days() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    /// One real certificate, made once: the seed the mutations start from.
    fn seed() -> &'static [u8] {
        static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        SEED.get_or_init(|| {
            certificate(
                &["allocator.example", "10.0.0.1"],
                (2024, 1, 1),
                (2034, 1, 1),
            )
        })
    }

    /// Property tests of a parser of outside input (`make fuzz` runs many more cases).
    mod fuzz {
        use super::*;

        proptest::proptest! {
            #[test]
            fn mutated_der_gives_a_summary_or_an_error(
                flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8)
            ) {
                let mut der = seed().to_vec();
                for (at, byte) in flips {
                    let at = at % der.len();
                    der[at] = byte;
                }
                let _ = summarize(&der);
            }

            #[test]
            fn truncated_der_is_an_error(length in 0usize..2048) {
                let der = seed();
                let cut = &der[..length.min(der.len().saturating_sub(1))];
                proptest::prop_assert!(summarize(cut).is_err());
            }

            #[test]
            fn arbitrary_bytes_give_a_summary_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
                let _ = summarize(&bytes);
            }
        }
    }
}
