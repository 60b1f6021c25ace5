//! Fills a `--data-dir` store with ROOMS rooms of MESSAGES messages each, as a server would
//! have left it, for measuring start-up with a full store (docs/durability.md).
//!
//! ```sh
//! cargo run --release --features store --example store_fill -- /tmp/full 1000 100
//! time smolchat --data-dir /tmp/full --check   # or: scripts/footprint.py with --data-dir
//! ```

use smolchat::protocol::Frame;
use smolchat::store::db::Database;
use smolchat::store::{Batch, Grant, Op};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, rooms, messages] = args.as_slice() else {
        return Err("usage: store_fill DIR ROOMS MESSAGES".into());
    };
    let rooms: u64 = rooms.parse().map_err(|_| "ROOMS: a number")?;
    let messages: u64 = messages.parse().map_err(|_| "MESSAGES: a number")?;
    let mut db = Database::open(std::path::Path::new(dir))?;
    let mut seq = 0;
    for r in 0..rooms {
        let mut batch = Batch::default();
        let room = format!("room-{r}");
        batch.add(Op::Create {
            room: room.clone(),
            epoch: format!("fill-{r}"),
            reserved: Some(Grant {
                up_to: messages,
                serial: r + 1,
            }),
        });
        for id in 1..=messages {
            seq += 1;
            // A 64-character text, as the benchmark sends.
            let event = format!(
                r#"{{"type":"message","room":"{room}","id":{id},"from":"guest-1","text":"{:064}","ts":1796600000000}}"#,
                id
            );
            batch.add(Op::Put {
                room: room.clone(),
                id,
                seq,
                frame: Frame::from(event),
            });
        }
        db.commit(&batch)?;
    }
    println!("{rooms} rooms x {messages} messages written to {dir}");
    Ok(())
}
