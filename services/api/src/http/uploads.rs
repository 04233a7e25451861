//! The headers every user upload is served with — attachments, avatars and
//! banners alike. The bytes are a stranger's, so a browser must never run
//! them as a page of this origin, whatever they turn out to be.
//!
//! `nosniff` holds the browser to the stored type. `Content-Security-Policy:
//! sandbox` turns a document that does get rendered into an opaque origin
//! with scripts off: the attachment sniffer accepts HTML and XML (so SVG
//! with an XML prolog), which a browser would otherwise render with this
//! origin's cookies and storage. `Content-Disposition` says whether a
//! browser navigating to the URL saves the file or shows it.

use axum::http::{HeaderName, HeaderValue, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{ApiError, ApiResult};

/// RFC 8187 `attr-char`: what `filename*=` may carry unescaped.
const ATTR_CHAR_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// How a browser navigating to an upload should treat it.
#[derive(Debug, Clone, Copy)]
pub enum Disposition<'a> {
    /// Save it, under this name: files of any type, from anyone.
    Attachment { filename: &'a str },
    /// Show it: only images whose type was checked against an allow-list
    /// on upload; the sandbox still applies.
    Inline,
}

/// `X-Content-Type-Options`, `Content-Security-Policy` and
/// `Content-Disposition` for an upload.
pub fn untrusted_content_headers(
    disposition: Disposition<'_>,
) -> ApiResult<[(HeaderName, HeaderValue); 3]> {
    let disposition = match disposition {
        Disposition::Inline => HeaderValue::from_static("inline"),
        Disposition::Attachment { filename } => HeaderValue::from_str(&format!(
            "attachment; filename=\"{}\"; filename*=UTF-8''{}",
            ascii_fallback(filename),
            utf8_percent_encode(filename, ATTR_CHAR_ESCAPES),
        ))
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("filename is no header: {err}")))?,
    };
    Ok([
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        ),
        (header::CONTENT_DISPOSITION, disposition),
    ])
}

/// The quoted `filename=` for clients that ignore `filename*=`: printable
/// ASCII kept, anything that could end or escape the quoted string, or
/// that is not ASCII, replaced.
fn ascii_fallback(filename: &str) -> String {
    filename
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disposition(filename: &str) -> String {
        let [_, _, (_, value)] =
            untrusted_content_headers(Disposition::Attachment { filename }).unwrap();
        value.to_str().unwrap().to_owned()
    }

    #[test]
    fn filenames_are_quoted_safely_and_kept_whole_in_utf8() {
        assert_eq!(
            disposition("photo 1.png"),
            "attachment; filename=\"photo 1.png\"; filename*=UTF-8''photo%201.png"
        );
        assert_eq!(
            disposition("a\"b;c.html"),
            "attachment; filename=\"a_b;c.html\"; filename*=UTF-8''a%22b%3Bc.html"
        );
        assert_eq!(
            disposition("résumé.pdf"),
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
    }

    #[test]
    fn every_upload_is_sandboxed_and_unsniffed() {
        for disposition in [
            Disposition::Inline,
            Disposition::Attachment { filename: "x.svg" },
        ] {
            let headers = untrusted_content_headers(disposition).unwrap();
            assert_eq!(headers[0].1, "nosniff");
            assert_eq!(headers[1].1, "sandbox");
        }
    }
}
