//! `application/x-www-form-urlencoded` decoding for `POST /connect` and `POST /forget`, which
//! take the same fields as Weave Net's (`peer` repeated, `replace=true|false`).

/// The fields of a `/connect` or `/forget` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerForm {
    /// Every `peer` value, in order.
    pub peers: Vec<String>,
    /// `replace=true`: drop the previous targets first.
    pub replace: bool,
}

impl PeerForm {
    /// Reads the fields from the URL query and the request body (either may be empty), body
    /// values first as Go's `ParseForm` orders them.
    pub fn parse(query: &str, body: &str) -> Result<Self, FormError> {
        let mut form = PeerForm::default();
        for (key, value) in parse_urlencoded(body)?
            .into_iter()
            .chain(parse_urlencoded(query)?)
        {
            match key.as_str() {
                "peer" => form.peers.push(value),
                // Weave compares with "true" exactly; anything else means no.
                "replace" => form.replace = value == "true",
                // Unknown fields are ignored, as Weave's handler ignores them.
                _ => {}
            }
        }
        Ok(form)
    }
}

/// Why a form body cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent-escape in form field {0:?}")]
    BadEscape(String),
    /// Decoded bytes are not UTF-8.
    #[error("form field {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// Splits `a=1&b=2` into decoded pairs; `+` is a space, `%XX` a byte; empty pieces skipped.
pub fn parse_urlencoded(s: &str) -> Result<Vec<(String, String)>, FormError> {
    s.split(['&', ';'])
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next(), bytes.next()];
                let [Some(h), Some(l)] = hex else {
                    return Err(FormError::BadEscape(s.to_string()));
                };
                let (Some(h), Some(l)) = (hex_val(h), hex_val(l)) else {
                    return Err(FormError::BadEscape(s.to_string()));
                };
                out.push(h << 4 | l);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8(s.to_string()))
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Encodes one form value (the client side of the same format).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weave_connect_body() {
        // What `weave connect --replace 10.0.0.2 [fd00::3]:6783` posts.
        let f = PeerForm::parse(
            "",
            "peer=10.0.0.2&peer=%5Bfd00%3A%3A3%5D%3A6783&replace=true",
        )
        .unwrap();
        assert_eq!(
            f,
            PeerForm {
                peers: vec!["10.0.0.2".into(), "[fd00::3]:6783".into()],
                replace: true
            }
        );
    }

    #[test]
    fn query_and_body_merge_and_replace_needs_exact_true() {
        let f = PeerForm::parse("peer=b&replace=1", "peer=a").unwrap();
        assert_eq!(f.peers, ["a", "b"]);
        assert!(!f.replace);
        assert_eq!(PeerForm::parse("", "").unwrap(), PeerForm::default());
    }

    #[test]
    fn decoding_rules() {
        assert_eq!(
            parse_urlencoded("a+b=c%20d&&x").unwrap(),
            [("a b".into(), "c d".into()), ("x".into(), String::new())]
        );
        assert_eq!(
            parse_urlencoded("peer=%zz"),
            Err(FormError::BadEscape("%zz".into()))
        );
        assert_eq!(
            parse_urlencoded("peer=%4"),
            Err(FormError::BadEscape("%4".into()))
        );
        assert_eq!(
            parse_urlencoded("peer=%ff"),
            Err(FormError::NotUtf8("%ff".into()))
        );
    }

    #[test]
    fn encode_round_trips() {
        for s in ["10.0.0.1", "[fd00::1]:6783", "a b&c=d", "ünï"] {
            let body = format!("peer={}", encode(s));
            assert_eq!(PeerForm::parse("", &body).unwrap().peers, [s]);
        }
    }
}
