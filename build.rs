//! Computes the Content-Security-Policy hashes of the web pages' inline script and style.
//!
//! `web/index.html` (protocol v1) and `web/raw.html` (raw mode) each hold exactly one inline
//! `<script>` and one `<style>` element. A page is served with a policy that allows only those
//! two by their SHA-256 (so inline event handlers and injected scripts cannot run). This script
//! hashes their exact contents and hands the base64 digests to the crate as
//! `SMOLCHAT_SCRIPT_SHA256` and `SMOLCHAT_STYLE_SHA256` (and `SMOLCHAT_RAW_...` for the raw
//! page), which `src/http.rs` puts into the header. Editing a page therefore needs no manual
//! step.
//!
//! It also writes each page gzip-compressed into `OUT_DIR`: the binary embeds only that (see
//! `http::PAGE_GZIP`).

use base64::Engine;
use sha2::{Digest, Sha256};

/// Each page and the prefix of its variables.
const PAGES: [(&str, &str); 2] = [
    ("web/index.html", "SMOLCHAT"),
    ("web/raw.html", "SMOLCHAT_RAW"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for (page, prefix) in PAGES {
        println!("cargo:rerun-if-changed={page}");
        let html =
            std::fs::read_to_string(page).unwrap_or_else(|e| panic!("cannot read {page}: {e}"));
        let script = inline_element(page, &html, "script");
        let style = inline_element(page, &html, "style");
        println!(
            "cargo:rustc-env={prefix}_SCRIPT_SHA256={}",
            sha256_base64(script)
        );
        println!(
            "cargo:rustc-env={prefix}_STYLE_SHA256={}",
            sha256_base64(style)
        );
        gzip(page, &html);
    }
}

/// Writes `page` gzip-compressed into OUT_DIR, as the binary embeds and serves it: the page
/// takes a third of the room (the compressor is a build dependency, not in the binary).
fn gzip(page: &str, html: &str) {
    use std::io::Write;
    let name = std::path::Path::new(page).file_name().expect("a file name");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR"))
        .join(name)
        .with_extension("html.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(html.as_bytes())
        .expect("compressing in memory");
    let compressed = encoder.finish().expect("compressing in memory");
    std::fs::write(&out, compressed).unwrap_or_else(|e| panic!("cannot write {out:?}: {e}"));
}

/// The text between `<tag ...>` and `</tag>`, which must occur exactly once in the page and
/// carry no `src`.
fn inline_element<'a>(page: &str, html: &'a str, tag: &str) -> &'a str {
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
        "{page} must contain exactly one <{tag}> element (found {}); the CSP hash covers only one",
        starts.len()
    );
    let start = starts[0];
    let tag_end = start
        + lower[start..]
            .find('>')
            .unwrap_or_else(|| panic!("{page}: unterminated <{tag}> tag"));
    assert!(
        !lower[start..tag_end].contains("src="),
        "{page}: <{tag}> must be inline; the page loads nothing external"
    );
    let body_start = tag_end + 1;
    let body_len = lower[body_start..]
        .find(&close)
        .unwrap_or_else(|| panic!("{page}: <{tag}> is never closed"));
    &html[body_start..body_start + body_len]
}

fn sha256_base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}
