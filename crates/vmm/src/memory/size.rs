//! Memory sizes on the command line: `256M`, `2G`, `1.5G`, `65536K`; a bare number means
//! MiB, as with QEMU's `-m`.

/// Why a size did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional K/M/G/T suffix.
    #[error("{0:?} is not a size (use e.g. 256M or 2G)")]
    Syntax(String),
    /// Too large to represent.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parses a size into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(SizeError::Syntax(text.into())),
            };
            (&t[..i], shift)
        }
        _ => (t, 20),
    };
    let syntax = || SizeError::Syntax(text.into());
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(syntax());
    }
    let whole: u64 = int.parse().map_err(|_| SizeError::Overflow(text.into()))?;
    let mut bytes = whole
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.into()))?;
    if !frac.is_empty() {
        let digits = frac.len().min(9) as u32;
        let f: u64 = frac[..digits as usize].parse().map_err(|_| syntax())?;
        bytes = bytes
            .checked_add(((u128::from(f) << shift) / 10u128.pow(digits)) as u64)
            .ok_or_else(|| SizeError::Overflow(text.into()))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_bare_mib() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert_eq!(parse_size("4096B"), Ok(4096));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "M", "abc", "12Q", "-1G", "1..5G", "0x10M"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
    }
}
