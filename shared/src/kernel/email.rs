//! E-mail addresses Waybill sends to: exactly one mailbox, nothing a mail API
//! could read as a list or a display name (`a@x.com, b@y.com`,
//! `"Eve" <eve@evil.com>`), no control characters.

/// Whether `e` is one plain address (`local@domain.tld`, at most 254 characters).
pub fn is_single_address(e: &str) -> bool {
    if e.is_empty() || e.len() > 254 {
        return false;
    }
    if e.chars()
        .any(|c| c.is_whitespace() || c.is_control() || ",;<>\"()[]\\:".contains(c))
    {
        return false;
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_plain_address_only() {
        for ok in [
            "kim@example.com",
            "kim.lee+orders@mail.example.co.uk",
            "o'brien@example.ie",
            "jürgen@bücher.de",
        ] {
            assert!(is_single_address(ok), "{ok}");
        }
        for bad in [
            "",
            "kim",
            "kim@",
            "@example.com",
            "kim@example",
            "a@x.com, b@y.com",
            "a@x.com,b@y.com",
            "a@x.com;b@y.com",
            "Eve <eve@evil.com>",
            "\"Eve\"@evil.com",
            "kim@example.com\r\nBcc: eve@evil.com",
            "kim@@example.com",
            "kim@exa@mple.com",
            "kim@example..com",
            ".kim@example.com",
            "kim@.example.com",
            "kim @example.com",
            "kim@[127.0.0.1]",
        ] {
            assert!(!is_single_address(bad), "{bad:?}");
        }
        assert!(!is_single_address(&format!(
            "{}@example.com",
            "a".repeat(65)
        )));
    }
}
