//! The small parsers and formatters of the command line and listings:
//! user ids, sizes, durations, ages.

use std::time::Duration;

/// `UID[:GID]` (numbers; the gid defaults to the uid).
pub fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not UID[:GID] (numbers)");
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// `123`, `64k`, `512m`, `2g` (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512m or 2g"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("`{s}`: a size must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

/// [`parse_bytes`], or `0` for "no limit".
pub fn parse_bytes_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_bytes(s)
}

/// `30`, `30s`, `1.5m`, `2h`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration like 30s, 5m or 1h");
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if n.is_nan() || n < 0.0 || !n.is_finite() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * mult))
}

/// `90s`, `5m`, `3h`, `2d`: a coarse age for listings.
pub fn format_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `1.5 GiB`-style sizes for listings and messages (the image store's own
/// formatter, so that its messages and ours read alike).
pub use rootfs_cache::human_size as human;

/// One line for a listed image: name, digest, size.
pub fn image_line(image: &rootfs_cache::Image) -> String {
    format!(
        "{} {} {}",
        image.name,
        image.manifest_digest,
        human(image.size)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_bytes_or_zero("0").unwrap(), 0);
        assert_eq!(parse_bytes_or_zero("1k").unwrap(), 1024);
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:5").unwrap(), (1000, 5));
    }

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(format_age(90), "90s");
        assert_eq!(format_age(3 * 3600), "3h");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
