//! Parsing of human sizes (`1.5GiB`, `512MB`, `25%`), shared by the library, `vramcap-run` and the CLI.
//!
//! Binary suffixes (`K`, `KiB`, …) are powers of 1024, decimal ones (`KB`, …) powers of 1000; decimals are
//! computed exactly in integers, so `1.5GiB` is 1610612736 and never a float rounding away from it.

use std::fmt;

/// A size as written: a byte count, or a share of the device's physical memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Bytes(u64),
    /// Percent of the device's total memory, in (0, 100].
    Percent(f64),
}

impl Size {
    /// The byte count on a device of `total` bytes.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            Size::Bytes(b) => b,
            Size::Percent(p) => ((total as f64) * p / 100.0) as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("'{0}' is not a number followed by an optional unit (B, K/KiB, M/MiB, G/GiB, T/TiB, KB, MB, GB, TB or %)")]
    Malformed(String),
    #[error("unknown unit '{0}' (use B, K/KiB, M/MiB, G/GiB, T/TiB for powers of 1024, KB/MB/GB/TB for powers of 1000, or %)")]
    Unit(String),
    #[error("'{0}' does not fit in 64 bits")]
    Overflow(String),
    #[error("'{0}' is zero: a cap of nothing would refuse every allocation")]
    Zero(String),
    #[error("'{0}' is not a share between 0% and 100%")]
    Percent(String),
}

/// Parses one size. Whitespace around the number and unit is ignored; units are case-insensitive.
pub fn parse_size(text: &str) -> Result<Size, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if number.is_empty() || (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.')
    {
        return Err(SizeError::Malformed(t.to_string()));
    }
    if unit == "%" {
        let p: f64 = number
            .parse()
            .map_err(|_| SizeError::Malformed(t.to_string()))?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(SizeError::Percent(t.to_string()));
        }
        return Ok(Size::Percent(p));
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(SizeError::Unit(unit.to_string())),
    };
    let overflow = || SizeError::Overflow(t.to_string());
    let digits = |s: &str| -> Result<u128, SizeError> {
        if s.is_empty() {
            return Ok(0);
        }
        if s.len() > 30 {
            return Err(overflow());
        }
        s.parse::<u128>()
            .map_err(|_| SizeError::Malformed(t.to_string()))
    };
    let whole = digits(int_part)?
        .checked_mul(multiplier)
        .ok_or_else(overflow)?;
    let frac = if frac_part.is_empty() {
        0
    } else {
        let scale = 10u128
            .checked_pow(frac_part.len() as u32)
            .ok_or_else(overflow)?;
        digits(frac_part)?
            .checked_mul(multiplier)
            .ok_or_else(overflow)?
            / scale
    };
    let bytes = u64::try_from(whole + frac).map_err(|_| overflow())?;
    if bytes == 0 {
        return Err(SizeError::Zero(t.to_string()));
    }
    Ok(Size::Bytes(bytes))
}

/// Formats bytes for people: `1.50 GiB`, `512.00 MiB`, `100 B`.
pub fn human(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// Display adapter behind [`human`].
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        // Integer arithmetic, rounded to hundredths: exact, and fast enough for a table of 1024 rows.
        let mut unit = 0;
        while unit + 1 < UNITS.len() && self.0 >= 1024u64 << (10 * (unit + 1)) {
            unit += 1;
        }
        let divisor = 1u128 << (10 * (unit + 1));
        let hundredths = (u128::from(self.0) * 100 + divisor / 2) / divisor;
        write!(
            f,
            "{}.{:02} {}",
            hundredths / 100,
            hundredths % 100,
            UNITS[unit]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> u64 {
        match parse_size(s).unwrap() {
            Size::Bytes(b) => b,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn units() {
        assert_eq!(bytes("100"), 100);
        assert_eq!(bytes("100B"), 100);
        assert_eq!(bytes("2K"), 2048);
        assert_eq!(bytes("2KiB"), 2048);
        assert_eq!(bytes("2KB"), 2000);
        assert_eq!(bytes("3M"), 3 << 20);
        assert_eq!(bytes("3MB"), 3_000_000);
        assert_eq!(bytes("10GiB"), 10 << 30);
        assert_eq!(bytes("10gib"), 10 << 30);
        assert_eq!(bytes("10 GB"), 10_000_000_000);
        assert_eq!(bytes("1T"), 1 << 40);
        assert_eq!(bytes("1TB"), 1_000_000_000_000);
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(bytes("1.5GiB"), 1_610_612_736);
        assert_eq!(bytes("0.5K"), 512);
        assert_eq!(bytes(".25M"), 1 << 18);
        assert_eq!(bytes("2.5"), 2);
    }

    #[test]
    fn percent() {
        assert_eq!(parse_size("25%").unwrap(), Size::Percent(25.0));
        assert_eq!(Size::Percent(25.0).resolve(80 << 30), 20 << 30);
        assert_eq!(Size::Percent(12.5).resolve(1000), 125);
        assert!(matches!(parse_size("0%"), Err(SizeError::Percent(_))));
        assert!(matches!(parse_size("101%"), Err(SizeError::Percent(_))));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("abc"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("1.2.3G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("10XB"), Err(SizeError::Unit(_))));
        assert!(matches!(parse_size("10 G B"), Err(SizeError::Unit(_))));
        assert!(matches!(parse_size("0"), Err(SizeError::Zero(_))));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(parse_size("."), Err(SizeError::Malformed(_))));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(1536 << 20), "1.50 GiB");
        assert_eq!(human(2 << 20), "2.00 MiB");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.00 KiB");
        assert_eq!(human((1 << 30) - 1), "1024.00 MiB");
        assert_eq!(human(u64::MAX), "16384.00 PiB");
    }
}
