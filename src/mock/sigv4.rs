//! An independent check of AWS Signature Version 4, so the mock SES rejects what real SES
//! would reject: it rebuilds the canonical request from what arrived (not from what the
//! client meant to send) and recomputes the signature with the secret it was given. Written
//! from the AWS specification with sha2 alone, so it shares no code with the aws-sigv4 signer
//! it checks.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Why a request's signature does not hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// No `AWS4-HMAC-SHA256` authorization, or one missing a part.
    Missing(&'static str),
    /// Well formed, but not signed with the secret (or the request changed after signing).
    Mismatch,
}

/// Check `headers` and `body` of a `method` request to `path` (no query) against `secret`.
/// Returns the access key id and the region the request was signed for.
pub fn verify(
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
) -> Result<(String, String), Invalid> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("AWS4-HMAC-SHA256 "))
        .ok_or(Invalid::Missing("authorization"))?;
    let part = |name: &str| {
        auth.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name))
            .map(str::to_owned)
    };
    let credential = part("Credential=").ok_or(Invalid::Missing("Credential"))?;
    let signed = part("SignedHeaders=").ok_or(Invalid::Missing("SignedHeaders"))?;
    let signature = part("Signature=").ok_or(Invalid::Missing("Signature"))?;
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(Invalid::Missing("x-amz-date"))?;
    // Credential = <key id>/<yyyymmdd>/<region>/<service>/aws4_request
    let scope: Vec<&str> = credential.splitn(5, '/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(Invalid::Missing("credential scope"));
    };
    let mut canonical_headers = String::new();
    for name in signed.split(';') {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        if values.is_empty() {
            return Err(Invalid::Missing("a signed header"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical = format!(
        "{method}\n{path}\n\n{canonical_headers}\n{signed}\n{}",
        hex::encode(Sha256::digest(body))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let expected = hex::encode(hmac(&k_signing, to_sign.as_bytes()));
    if expected == signature {
        Ok((key_id.to_owned(), region.to_owned()))
    } else {
        Err(Invalid::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hex::encode(hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The AWS SigV4 test suite's `get-vanilla` request, signed with its documented secret.
    #[test]
    fn accepts_the_aws_test_suite_vector_and_rejects_a_changed_request() {
        let mut h = HeaderMap::new();
        h.insert("host", "example.amazonaws.com".parse().unwrap());
        h.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .parse()
                .unwrap(),
        );
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            verify("GET", "/", &h, b"", secret),
            Ok(("AKIDEXAMPLE".into(), "us-east-1".into()))
        );
        assert_eq!(verify("GET", "/", &h, b"x", secret), Err(Invalid::Mismatch));
        assert_eq!(verify("GET", "/", &h, b"", "other"), Err(Invalid::Mismatch));
    }
}
