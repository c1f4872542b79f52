//! Tenant names: the one spelling every entry point accepts.
//!
//! A tenant name becomes part of Redis keys (`mf:{p}:bulk:t:<tenant>`), of signed unsubscribe
//! tokens, of Prometheus labels and of Postgres rows, so it is restricted to a set that is safe
//! in all of them: 1 to 64 of `A-Z a-z 0-9 . _ -`. The API, stream entries, the CLI and the
//! config all check it here (docs/security.md).

/// The longest tenant name.
pub const MAX_TENANT_LEN: usize = 64;

/// Why a tenant name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TENANT_LEN} characters")]
    TooLong,
    #[error("may hold only letters, digits, '.', '_' and '-'")]
    Character,
}

/// Check a tenant name: 1 to [`MAX_TENANT_LEN`] of `[A-Za-z0-9._-]`.
pub fn check_tenant(name: &str) -> Result<(), TenantError> {
    if name.is_empty() {
        return Err(TenantError::Empty);
    }
    if name.len() > MAX_TENANT_LEN {
        return Err(TenantError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(TenantError::Character);
    }
    Ok(())
}

/// For clap's `value_parser`: the name itself, or the reason it was refused.
pub fn parse_tenant(name: &str) -> Result<String, String> {
    check_tenant(name)
        .map(|()| name.to_owned())
        .map_err(|e| format!("the tenant name {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_safe_set_is_a_tenant() {
        for ok in ["acme", "a", "Acme-2.eu_west", &"x".repeat(64)] {
            assert_eq!(check_tenant(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_tenant(""), Err(TenantError::Empty));
        assert_eq!(check_tenant(&"x".repeat(65)), Err(TenantError::TooLong));
        for bad in ["acme|zz", "a b", "a:b", "a\nb", "é", "a{b}", "a/b", "a*"] {
            assert_eq!(check_tenant(bad), Err(TenantError::Character), "{bad:?}");
        }
        assert!(parse_tenant("a|b").unwrap_err().contains("letters, digits"));
    }
}
