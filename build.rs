//! Computes the Content-Security-Policy hashes of the web client's inline script and style.
//!
//! `web/index.html` holds exactly one inline `<script>` and one `<style>` element. The page is
//! served with a policy that allows only those two by their SHA-256 (so inline event handlers
//! and injected scripts cannot run). This script hashes their exact contents and hands the
//! base64 digests to the crate as `SMOLCHAT_SCRIPT_SHA256` and `SMOLCHAT_STYLE_SHA256`, which
//! `src/http.rs` puts into the header. Editing the page therefore needs no manual step.

use base64::Engine;
use sha2::{Digest, Sha256};

const PAGE: &str = "web/index.html";

fn main() {
    println!("cargo:rerun-if-changed={PAGE}");
    println!("cargo:rerun-if-changed=build.rs");
    let html = std::fs::read_to_string(PAGE).unwrap_or_else(|e| panic!("cannot read {PAGE}: {e}"));
    let script = inline_element(&html, "script");
    let style = inline_element(&html, "style");
    println!(
        "cargo:rustc-env=SMOLCHAT_SCRIPT_SHA256={}",
        sha256_base64(script)
    );
    println!(
        "cargo:rustc-env=SMOLCHAT_STYLE_SHA256={}",
        sha256_base64(style)
    );
}

/// The text between `<tag ...>` and `</tag>`, which must occur exactly once in the page and
/// carry no `src`.
fn inline_element<'a>(html: &'a str, tag: &str) -> &'a str {
    let lower = html.to_ascii_lowercase();
    let open = format!("<{tag}");
    let close = format!("</{tag}");
    let starts: Vec<usize> = lower
        .match_indices(&open)
        .map(|(i, _)| i)
        .filter(|&i| {
            // `<script>` or `<script ...>`, not `<scripts>`.
            matches!(
                lower.as_bytes().get(i + open.len()),
                Some(b'>' | b' ' | b'\t' | b'\n' | b'\r')
            )
        })
        .collect();
    assert!(
        starts.len() == 1,
        "{PAGE} must contain exactly one <{tag}> element (found {}); the CSP hash covers only one",
        starts.len()
    );
    let start = starts[0];
    let tag_end = start
        + lower[start..]
            .find('>')
            .unwrap_or_else(|| panic!("{PAGE}: unterminated <{tag}> tag"));
    assert!(
        !lower[start..tag_end].contains("src="),
        "{PAGE}: <{tag}> must be inline; the page loads nothing external"
    );
    let body_start = tag_end + 1;
    let body_len = lower[body_start..]
        .find(&close)
        .unwrap_or_else(|| panic!("{PAGE}: <{tag}> is never closed"));
    &html[body_start..body_start + body_len]
}

fn sha256_base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}
