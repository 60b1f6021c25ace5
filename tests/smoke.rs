mod common;
use common::*;

#[test]
fn two_clients_chat_in_the_lobby() {
    let server = server();
    run(async {
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        let joined = a.expect("join").await;
        assert_eq!(joined["nick"], b.nick.as_str());
        a.send_text("hello").await;
        for c in [&mut a, &mut b] {
            let m = c.expect("message").await;
            assert_eq!(m["text"], "hello");
            assert_eq!(m["id"], 1);
        }
    });
}

/// The web client is served as the binary keeps it, gzip-compressed, to every client that
/// accepts gzip (every browser); one that does not is told so with 406, not sent bytes it
/// cannot read.
#[test]
fn the_page_is_sent_gzipped_and_a_client_without_gzip_is_told_406() {
    let server = server();
    run(async {
        let (head, body) = common::page(server.addr).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        for header in [
            "content-encoding: gzip",
            "vary: accept-encoding",
            "content-security-policy: default-src 'none'",
        ] {
            assert!(lower.contains(header), "{header} in {head}");
        }
        assert_eq!(body, smolchat::http::PAGE);
        let length: usize = common::raw::header(&head, "content-length")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, smolchat::http::PAGE_GZIP.len());
        assert!(
            length * 2 < smolchat::http::PAGE.len(),
            "compressed to less than half"
        );
        for refused in [
            "",
            "Accept-Encoding: identity\r\n",
            "Accept-Encoding: gzip;q=0, br\r\n",
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: x\r\n{refused}\r\n");
            let response = http(server.addr, &request).await;
            assert!(
                response.starts_with("HTTP/1.1 406"),
                "{refused:?}: {response}"
            );
            assert!(response.contains("curl --compressed"), "{response}");
        }
    });
}
