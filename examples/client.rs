//! A terminal chat client for smolchat.
//!
//! ```text
//! cargo run --example client -- ws://127.0.0.1:8080/ws
//! ```
//!
//! Type a line and press Enter to say it in your current room (the room you joined last).
//! Lines that start with `/` are commands:
//!
//! ```text
//! /nick NAME        change your nick
//! /join ROOM        join a room (or catch up on one you are in); it becomes your current room
//! /leave [ROOM]     leave a room (default: the current one)
//! /msg NICK TEXT    send a private message
//! /who [ROOM]       list a room's members (default: the current room)
//! /rooms            list the server's rooms
//! /quit             leave (end of input does the same)
//! /help             show this list
//! //text            say "/text" (a line that starts with a slash)
//! ```
//!
//! It also works with piped input, which is handy for trying the server out:
//!
//! ```text
//! printf '/nick ada\nhello\n/rooms\n/quit\n' | cargo run --example client -- ws://127.0.0.1:8080/ws
//! ```
//!
//! How it is built: one WebSocket connection, split into a sending half and a receiving half.
//! Two futures run side by side on one thread: the *reader* prints every event the server sends,
//! the *writer* turns the lines you type into JSON commands. They share a little state (your
//! nick, your rooms) through a `RefCell`, which is safe because both run in the same task and
//! never hold a borrow across an `.await`. The protocol itself is described in docs/protocol.md.
//!
//! Times are shown as HH:MM in UTC: local time would need a time-zone crate.

use std::cell::RefCell;
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, StreamExt, future};
use serde::Deserialize;
use serde_json::{Value, json};
use smol::channel::{Receiver, Sender};
use smol::{Async, Timer, Unblock};

type Socket = Async<TcpStream>;

const HELP: &str = "\
commands:
  /nick NAME        change your nick
  /join ROOM        join a room; it becomes your current room
  /leave [ROOM]     leave a room (default: the current one)
  /msg NICK TEXT    send a private message
  /who [ROOM]       list a room's members (default: the current room)
  /rooms            list the server's rooms
  /quit             leave
  anything else is said in your current room (start it with // to say a line beginning with /)";

/// How long to wait for the server's last answers, and for its goodbye, when quitting.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// A room name nobody is expected to use, asked about once when quitting (see `quit`).
const LAST_QUESTION_ROOM: &str = "-";

/// An event from the server (see docs/protocol.md). Fields the client does not show, such as
/// a room's `epoch`, are left out: serde ignores fields it is not asked for.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event {
    Welcome {
        nick: String,
        server: String,
    },
    Room {
        room: String,
        /// The first members in join order; a big room lists only some of them.
        members: Vec<String>,
        /// How many members the room has.
        count: usize,
        /// Only present when we joined with a cursor (`since`/`epoch`); this client never does.
        complete: Option<bool>,
    },
    Join {
        room: String,
        nick: String,
    },
    Leave {
        room: String,
        nick: String,
        reason: String,
    },
    Message {
        room: String,
        from: String,
        text: String,
        ts: u64,
    },
    Nick {
        old: String,
        nick: String,
    },
    Direct {
        from: String,
        to: String,
        text: String,
        ts: u64,
    },
    Members {
        room: String,
        members: Vec<String>,
        count: usize,
    },
    Rooms {
        rooms: Vec<RoomCount>,
    },
    Error {
        code: String,
        message: String,
    },
}

/// One entry of a `rooms` event.
#[derive(Debug, Deserialize)]
struct RoomCount {
    name: String,
    members: usize,
}

/// What the reader and the writer both need to know.
#[derive(Default)]
struct State {
    /// Our nick, from `welcome` and our own `nick` events.
    nick: String,
    /// The rooms the server confirmed we are in (by a `room` event), in join order.
    rooms: Vec<String>,
    /// Where plain lines go: the room we joined last.
    current: Option<String>,
    /// Set once we start saying goodbye, so the server's answering close is not news.
    quitting: bool,
}

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --example client -- ws://HOST:PORT/ws");
        return ExitCode::FAILURE;
    };
    let (authority, path) = match parse_ws_url(&url) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    smol::block_on(async {
        match run(&url, &authority, &path).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Splits `ws://host:port/path` into `("host:port", "/path")`. The port defaults to 80 and the
/// path to `/`. Only plain `ws://` is supported: `wss://` would need a TLS library.
fn parse_ws_url(url: &str) -> Result<(String, String), String> {
    let Some(rest) = url.strip_prefix("ws://") else {
        return Err(format!(
            "{url:?}: expected a URL like ws://127.0.0.1:8080/ws (only ws:// is supported)"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: the host is missing"));
    }
    // "[::1]:8080" has colons inside the brackets, so only a colon after them counts.
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

async fn run(url: &str, authority: &str, path: &str) -> Result<(), String> {
    // Resolve the host name, connect over TCP, then do the WebSocket handshake on that socket.
    let addrs = smol::net::resolve(authority)
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    let addr = addrs
        .first()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let tcp = Socket::connect(*addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (ws, _response) = async_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| format!("WebSocket handshake with {authority}{path} failed: {e}"))?;
    let (mut sender, mut receiver) = ws.split();

    let state = RefCell::new(State::default());
    // The reader tells the writer here that the answer to its last question arrived.
    let (answered, answer) = smol::channel::bounded(1);

    let reader = read_events(&mut receiver, &state, &answered);
    let writer = async {
        write_commands(&mut sender, &state, &answer).await;
        // Quitting: the reader now waits for the server's close; don't wait forever.
        Timer::after(GOODBYE_WAIT).await;
    };
    // Whichever finishes first ends the program: the reader when the connection ends, the
    // writer if the server never finishes closing.
    future::or(reader, writer).await;
    Ok(())
}

/// Prints every event until the connection ends.
async fn read_events(
    receiver: &mut WebSocketReceiver<Socket>,
    state: &RefCell<State>,
    answered: &Sender<()>,
) {
    // Whether the server said goodbye with a close frame, and what to say if it did not.
    let mut closed = false;
    let mut lost = String::from("the server went away without closing the connection");
    while let Some(frame) = receiver.next().await {
        match frame {
            Ok(Message::Text(text)) => show_event(text.as_str(), state, answered),
            Ok(Message::Close(frame)) => {
                closed = true;
                if !state.borrow().quitting {
                    match frame {
                        Some(f) => println!(
                            "* the server closed the connection: {} {}",
                            u16::from(f.code),
                            f.reason
                        ),
                        None => println!("* the server closed the connection"),
                    }
                }
                // Keep reading: tungstenite answers the close for us, and the stream ends
                // when the server then closes the socket.
            }
            // Pings are answered by tungstenite on its own; nothing else is expected.
            Ok(_) => {}
            Err(e) => {
                lost = format!("connection lost: {e}");
                break;
            }
        }
    }
    if !closed && !state.borrow().quitting {
        println!("* {lost}");
    }
}

/// Prints one event in a readable form and keeps `state` up to date.
fn show_event(text: &str, state: &RefCell<State>, answered: &Sender<()>) {
    let event: Event = match serde_json::from_str(text) {
        Ok(event) => event,
        Err(_) => {
            // A newer server may send events this client does not know: show them raw.
            println!("? {text}");
            return;
        }
    };
    let mut state = state.borrow_mut();
    match event {
        Event::Welcome { nick, server } => {
            println!("* connected to {server} as {nick} (type /help for commands)");
            state.nick = nick;
        }
        Event::Room {
            room,
            members,
            count,
            complete,
        } => {
            // The server's answer to a join: the room is now our current room.
            state.rooms.retain(|r| *r != room);
            state.rooms.push(room.clone());
            state.current = Some(room.clone());
            println!(
                "* you are in {room}; members: {}",
                member_list(&members, count)
            );
            if complete == Some(false) {
                println!("* (some earlier messages of {room} are no longer available)");
            }
        }
        Event::Join { room, nick } => println!("* {nick} joined {room}"),
        Event::Leave { room, nick, reason } if reason == "left" => {
            println!("* {nick} left {room}")
        }
        Event::Leave { room, nick, reason } => println!("* {nick} left {room} ({reason})"),
        Event::Message {
            room,
            from,
            text,
            ts,
        } => println!("{} [{room}] <{from}> {text}", clock(ts)),
        Event::Nick { old, nick } if old == state.nick => {
            println!("* you are now known as {nick}");
            state.nick = nick;
        }
        Event::Nick { old, nick } => println!("* {old} is now known as {nick}"),
        // Our own direct messages come back to us, so we see them in order with the others.
        Event::Direct { from, to, text, ts } if from == state.nick => {
            println!("{} -> {to}: {text}", clock(ts))
        }
        Event::Direct { from, text, ts, .. } => println!("{} <- {from}: {text}", clock(ts)),
        Event::Members { room, .. } if state.quitting && room == LAST_QUESTION_ROOM => {
            let _ = answered.try_send(());
        }
        Event::Members { room, count: 0, .. } => println!("* nobody is in {room}"),
        Event::Members {
            room,
            members,
            count,
        } => println!("* in {room}: {}", member_list(&members, count)),
        Event::Rooms { rooms } if rooms.is_empty() => println!("* there are no rooms"),
        Event::Rooms { rooms } => {
            let list: Vec<String> = rooms
                .iter()
                .map(|r| format!("{} ({})", r.name, r.members))
                .collect();
            println!("* rooms (members): {}", list.join(", "));
        }
        Event::Error { code, message } => {
            println!("! error {code}: {message}");
            if code == "room_limit" || code == "invalid_room" {
                // A join we counted on failed: go back to the last room the server confirmed.
                state.current = state.rooms.last().cloned();
            }
        }
    }
}

/// "ada, bob", or "ada, bob and 998 more" when the server listed only the first of a big room.
fn member_list(members: &[String], count: usize) -> String {
    let list = members.join(", ");
    match count.saturating_sub(members.len()) {
        0 => list,
        more => format!("{list} and {more} more"),
    }
}

/// Formats a server timestamp (milliseconds since 1970, UTC) as HH:MM in UTC.
fn clock(ts_ms: u64) -> String {
    let seconds_today = (ts_ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}",
        seconds_today / 3600,
        seconds_today % 3600 / 60
    )
}

/// Reads lines from stdin and sends them as commands until `/quit` or the end of input.
async fn write_commands(
    sender: &mut WebSocketSender<Socket>,
    state: &RefCell<State>,
    answer: &Receiver<()>,
) {
    // Stdin is blocking; `Unblock` reads it on a helper thread so this future can wait on it.
    let mut lines = BufReader::new(Unblock::new(std::io::stdin())).lines();
    while let Some(Ok(line)) = lines.next().await {
        let command = match to_command(line.trim_end(), state) {
            Ok(Some(command)) => command,
            Ok(None) => continue,
            Err(Quit) => break,
        };
        if sender
            .send(Message::text(command.to_string()))
            .await
            .is_err()
        {
            return; // the connection is gone; the reader says why
        }
    }
    quit(sender, state, answer).await;
}

/// The user asked to leave.
struct Quit;

/// Turns one typed line into the JSON command to send, or `None` when there is nothing to send
/// (an empty line, `/help`, a mistake already explained to the user).
fn to_command(line: &str, state: &RefCell<State>) -> Result<Option<Value>, Quit> {
    let Some(command) = line.strip_prefix('/') else {
        return Ok(say(line, state));
    };
    if command.starts_with('/') {
        return Ok(say(command, state)); // "//text" says "/text"
    }
    let (name, args) = command.split_once(' ').unwrap_or((command, ""));
    let args = args.trim();
    let current = state.borrow().current.clone();
    let usage = |text: &str| {
        println!("usage: {text}");
        Ok(None)
    };
    Ok(Some(match name {
        "nick" if !args.is_empty() => json!({"type": "nick", "nick": args}),
        "nick" => return usage("/nick NAME"),
        "join" if !args.is_empty() => {
            // Plain lines typed right after this one belong in the new room, so switch now
            // instead of waiting for the server's `room` answer (which confirms it).
            state.borrow_mut().current = Some(args.to_string());
            json!({"type": "join", "room": args})
        }
        "join" => return usage("/join ROOM"),
        "leave" => {
            let Some(room) = Some(args.to_string()).filter(|r| !r.is_empty()).or(current) else {
                return usage("/leave ROOM (you have no current room)");
            };
            // The server sends nothing back to the one who leaves (only an error if we were
            // not in the room), so update our own view now.
            let mut state = state.borrow_mut();
            state.rooms.retain(|r| *r != room);
            if state.current.as_deref() == Some(room.as_str()) {
                state.current = state.rooms.last().cloned();
            }
            json!({"type": "leave", "room": room})
        }
        "msg" => match args.split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => {
                json!({"type": "direct", "to": to, "text": text.trim()})
            }
            _ => return usage("/msg NICK TEXT"),
        },
        "who" => match Some(args.to_string()).filter(|r| !r.is_empty()).or(current) {
            Some(room) => json!({"type": "who", "room": room}),
            None => return usage("/who ROOM (you have no current room)"),
        },
        "rooms" => json!({"type": "rooms"}),
        "quit" => return Err(Quit),
        "help" => {
            println!("{HELP}");
            return Ok(None);
        }
        _ => {
            println!("unknown command /{name}; /help lists the commands");
            return Ok(None);
        }
    }))
}

/// A `say` command for the current room, or `None` (with a hint) if there is nothing to say
/// or nowhere to say it.
fn say(text: &str, state: &RefCell<State>) -> Option<Value> {
    if text.trim().is_empty() {
        return None;
    }
    match &state.borrow().current {
        Some(room) => Some(json!({"type": "say", "room": room, "text": text})),
        None => {
            println!("you are in no room; /join one first");
            None
        }
    }
}

/// Says goodbye without losing the answers to what we sent last.
///
/// If we closed right away, the server could see our close before it wrote its answers to our
/// last commands, and drop them. So first we ask one last question and wait for its answer: the
/// server answers one client's commands in the order they were sent, so once that answer is
/// here, every earlier answer is here too. Then we send the close frame, and the reader waits
/// for the server's close in return.
async fn quit(sender: &mut WebSocketSender<Socket>, state: &RefCell<State>, answer: &Receiver<()>) {
    state.borrow_mut().quitting = true;
    let question = json!({"type": "who", "room": LAST_QUESTION_ROOM});
    if sender
        .send(Message::text(question.to_string()))
        .await
        .is_ok()
    {
        let timeout = async {
            Timer::after(GOODBYE_WAIT).await;
            Ok(())
        };
        let _ = future::or(answer.recv(), timeout).await;
    }
    let goodbye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    let _ = sender.close(Some(goodbye)).await;
}
