//! Buckets and basis points, shared by route splits and flag rollouts.
//!
//! Public contract, so other tools can predict assignments: a key's bucket under a name (a
//! route or a flag) is `(murmur3_x86_32(name ++ key, seed 0) as u64 * 10_000) >> 32`, the
//! integer scheme flagd uses for `fractional`. Shares are basis points: one bucket is 0.01%.

/// Buckets per route: shares are basis points, so one bucket is 0.01%.
pub const BUCKETS: u32 = 10_000;

/// `murmur3_x86_32(name ++ key, 0)`, hashed without joining the two.
pub fn hash(name: &str, key: &[u8]) -> u32 {
    use std::hash::Hasher as _;
    let mut hasher = mur3::Hasher32::with_seed(0);
    hasher.write(name.as_bytes());
    hasher.write(key);
    hasher.finish32()
}

/// The sticky bucket of `key` under `name` (a route or a flag), in `0..10_000`.
pub fn bucket(name: &str, key: &[u8]) -> u16 {
    ((u64::from(hash(name, key)) * u64::from(BUCKETS)) >> 32) as u16
}

/// A percentage from 0 to 100 with at most 2 decimals, as basis points (90.5 → 9050).
pub fn basis_points(value: f64) -> Result<u32, String> {
    let scaled = value * 100.0;
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        Err(format!("{value} is not a percentage from 0 to 100"))
    } else if (scaled - scaled.round()).abs() > 1e-6 {
        Err(format!("{value} has more than 2 decimals"))
    } else {
        Ok(scaled.round() as u32)
    }
}

/// Basis points as a percentage for messages: 9050 → "90.5".
pub fn format_percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => whole.to_string(),
        frac if frac % 10 == 0 => format!("{whole}.{}", frac / 10),
        frac => format!("{whole}.{frac:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_flagd_vectors() {
        for (key, expected) in [
            ("ejOoVL", 0x0000_0000u32),
            ("bY9fO-", 0x0000_0001),
            ("SI7p-", 0x7fff_ffff),
            ("6LvT0", 0x8000_0000),
            ("ceQdGm", 0xffff_ffff),
        ] {
            assert_eq!(hash("", key.as_bytes()), expected, "key {key}");
            // Splitting the input between route and key changes nothing.
            let (route, rest) = key.split_at(2);
            assert_eq!(hash(route, rest.as_bytes()), expected, "key {key} split");
        }
        assert_eq!(bucket("", b"ejOoVL"), 0);
        assert_eq!(bucket("", b"ceQdGm"), 9_999);
    }

    #[test]
    fn percentages_are_basis_points() {
        assert_eq!(basis_points(90.5), Ok(9050));
        assert!(basis_points(12.345).is_err());
        assert!(basis_points(100.01).is_err());
        assert_eq!(format_percent(9050), "90.5");
        assert_eq!(format_percent(1), "0.01");
        assert_eq!(format_percent(10_000), "100");
    }
}
