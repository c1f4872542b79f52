//! Email addresses that are valid and header-safe by construction.
//!
//! We accept the dot-atom form of RFC 5322 (what every real mailbox provider issues) with the
//! RFC 5321 length limits: 64 octets for the local part, 254 for the whole path. Quoted local
//! parts, comments, IP-literal domains and non-ASCII (use punycode for IDN domains) are refused:
//! they are where header injection and provider disagreements live.

use std::fmt;

pub const MAX_ADDRESS_LEN: usize = 254;
pub const MAX_LOCAL_LEN: usize = 64;
pub const MAX_DISPLAY_NAME_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("is empty")]
    Empty,
    #[error("contains CR, LF or NUL")]
    HeaderInjection,
    #[error("is longer than {MAX_ADDRESS_LEN} characters")]
    TooLong,
    #[error("has no '@'")]
    NoAt,
    #[error("local part is longer than {MAX_LOCAL_LEN} characters")]
    LocalTooLong,
    #[error("local part is not a valid dot-atom")]
    BadLocal,
    #[error("domain is not a valid host name")]
    BadDomain,
    #[error("display name is invalid")]
    BadDisplayName,
}

/// A bare address (`local@domain`), lower-cased domain, valid by construction.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address(String);

impl Address {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if super::has_header_breaking_char(s) {
            return Err(AddressError::HeaderInjection);
        }
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        let at = s.rfind('@').ok_or(AddressError::NoAt)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.len() > MAX_LOCAL_LEN {
            return Err(AddressError::LocalTooLong);
        }
        if !is_dot_atom(local) {
            return Err(AddressError::BadLocal);
        }
        if !is_hostname(domain) {
            return Err(AddressError::BadDomain);
        }
        Ok(Address(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part, safe to log (it names a provider, not a person).
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

// Debug never prints the address: Debug output ends up in logs.
impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address(***@{})", self.domain())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

fn is_hostname(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// An address with an optional display name: `Ada Lovelace <ada@example.com>` or `ada@example.com`.
#[derive(Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: Address,
}

impl Mailbox {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if super::has_header_breaking_char(s) {
            return Err(AddressError::HeaderInjection);
        }
        let s = s.trim();
        match (s.find('<'), s.ends_with('>')) {
            (Some(open), true) => {
                let name = s[..open].trim().trim_matches('"').trim();
                let address = Address::parse(&s[open + 1..s.len() - 1])?;
                if name.len() > MAX_DISPLAY_NAME_LEN
                    || name.contains(['<', '>', '"', '\\'])
                    || name.chars().any(char::is_control)
                {
                    return Err(AddressError::BadDisplayName);
                }
                Ok(Mailbox {
                    name: (!name.is_empty()).then(|| name.to_owned()),
                    address,
                })
            }
            (None, false) => Ok(Mailbox {
                name: None,
                address: Address::parse(s)?,
            }),
            _ => Err(AddressError::BadDisplayName),
        }
    }
}

impl Mailbox {
    /// The mailbox as an RFC 5322 header value: `addr`, `"Display Name" <addr>`, or with a
    /// non-ASCII name an RFC 2047 encoded word (`=?UTF-8?B?...?= <addr>`), the form every
    /// vendor API and SMTP accept.
    pub fn to_header(&self) -> String {
        use base64::Engine;
        match &self.name {
            None => self.address.as_str().to_owned(),
            Some(n) if n.is_ascii() => {
                let quoted = n.replace('\\', "\\\\").replace('"', "\\\"");
                format!("\"{quoted}\" <{}>", self.address.as_str())
            }
            Some(n) => format!(
                "=?UTF-8?B?{}?= <{}>",
                base64::engine::general_purpose::STANDARD.encode(n.as_bytes()),
                self.address.as_str()
            ),
        }
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailbox({:?})", self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_lowercases_the_domain() {
        let a = Address::parse("Ada.Lovelace+tag@Example.COM").unwrap();
        assert_eq!(a.as_str(), "Ada.Lovelace+tag@example.com");
        assert_eq!(a.domain(), "example.com");
    }

    #[test]
    fn formats_mailboxes_as_header_values() {
        let m = |s: &str| Mailbox::parse(s).unwrap().to_header();
        assert_eq!(m("a@b.com"), "a@b.com");
        assert_eq!(m("Ada <a@b.com>"), "\"Ada\" <a@b.com>");
        let quoted = Mailbox {
            name: Some(r#"A "Q" \ B"#.into()),
            address: Address::parse("a@b.com").unwrap(),
        };
        assert_eq!(quoted.to_header(), r#""A \"Q\" \\ B" <a@b.com>"#);
        assert_eq!(m("Zoë <a@b.com>"), "=?UTF-8?B?Wm/Dqw==?= <a@b.com>");
    }

    #[test]
    fn rejects_header_injection_anywhere() {
        for bad in ["a@b.com\r\nBcc: x@y.com", "a\n@b.com", "a@b.com\0"] {
            assert_eq!(Address::parse(bad), Err(AddressError::HeaderInjection));
            assert_eq!(Mailbox::parse(bad), Err(AddressError::HeaderInjection));
        }
        assert_eq!(
            Mailbox::parse("Evil\r\nBcc: x@y.com <a@b.com>"),
            Err(AddressError::HeaderInjection)
        );
    }

    #[test]
    fn enforces_rfc5321_lengths() {
        let local = "a".repeat(65);
        assert_eq!(
            Address::parse(&format!("{local}@example.com")),
            Err(AddressError::LocalTooLong)
        );
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(190));
        assert_eq!(Address::parse(&long), Err(AddressError::TooLong));
        let ok = format!("{}@{}.com", "a".repeat(64), "b".repeat(60));
        assert!(Address::parse(&ok).is_ok());
    }

    #[test]
    fn rejects_unparsable_forms() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a..b@example.com",
            ".a@example.com",
            "a@-example.com",
            "a@example",
            "\"quoted\"@example.com",
            "a@exa mple.com",
            "a@[127.0.0.1]",
            "ü@example.com",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn parses_display_names() {
        let m = Mailbox::parse("Ada Lovelace <ada@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(m.address.as_str(), "ada@example.com");
        assert!(Mailbox::parse("Ada <ada@example.com").is_err());
        assert!(Mailbox::parse("A<b> <ada@example.com>").is_err());
    }

    #[test]
    fn debug_never_shows_the_local_part() {
        let a = Address::parse("secret.person@example.com").unwrap();
        assert!(!format!("{a:?}").contains("secret"));
        let m = Mailbox::parse("Secret Person <secret.person@example.com>").unwrap();
        assert!(!format!("{m:?}").contains("ecret"));
    }
}
