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
