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
//! Messages that applications publish through the server's HTTP API (`"api": true`) are
//! marked `[api]`: the name on them is not necessarily anybody's nick.
//!
//! **Reconnecting.** When the connection drops, or the server goes away for a while (close
//! 1001 at a restart, 1011/1012 from a scaled-out node, 1013 for a slow reader), the client
//! connects again by itself: after 0.5 s, then 1 s, 2 s, … at most 10 s apart, until it is back.
//! Then it takes its nick back and rejoins its rooms with the id and `epoch` of the last
//! message it showed in each (`since`/`epoch`, see "History and recovery" in docs/protocol.md):
//! it shows what it missed, nothing twice, and says so when the server could not send
//! everything (`complete: false`: the server restarted or its history ran out). Lines typed
//! while it is away are read once it is back (`/quit` too: Ctrl-C leaves at once). If the old
//! connection still holds your nick when the new one asks for it (`nick_taken`: the server has
//! not noticed yet that it is gone), `/nick` again a moment later.
//!
//! It does **not** reconnect when connecting again would end the same way: after any other
//! close, such as an expired token (4001), a policy violation like flooding (1008), too many
//! connections for this user (4002) or a protocol error (1002), and after a handshake the
//! server refuses (401, 403, …). It says why and exits. Nor does it retry when the very first
//! connection fails: that is usually a wrong URL.
//!
//! How it is built: a loop of sessions, one per connection. A session's WebSocket is split into
//! a sending half and a receiving half, and two futures run side by side on one thread: the
//! *reader* prints every event the server sends, the *writer* turns the lines you type into
//! JSON commands. They share a little state (your nick, your rooms and where you are in each)
//! through a `RefCell`, which is safe because both run in the same task and never hold a borrow
//! across an `.await`; it outlives the connection, which is how the next one knows where to
//! pick up. The protocol itself is described in docs/protocol.md.
//!
//! Times are shown as HH:MM in UTC: local time would need a time-zone crate.

use std::cell::RefCell;
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_lite::io::{BufReader, Lines};
use futures_lite::{AsyncBufReadExt, StreamExt, future};
use serde::Deserialize;
use serde_json::{Value, json};
use smol::channel::{Receiver, Sender};
use smol::{Async, Timer, Unblock};

type Socket = Async<TcpStream>;

/// What you type, one line at a time. It outlives every connection.
type Input = Lines<BufReader<Unblock<std::io::Stdin>>>;

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

/// The wait before the first attempt to reconnect; it doubles with each failed attempt, up
/// to `MAX_RETRY_DELAY`, and starts again from here once a connection works.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Close codes after which connecting again can help: the server is going away (1001, a
/// restart), had an internal problem (1011), lost our session (1012, scale-out), or found us
/// too slow (1013). A connection that ends without a close frame at all (what browsers call
/// 1006) is retried too. Every other close is final (see the module documentation).
const RETRY_CODES: [u16; 4] = [1001, 1011, 1012, 1013];

/// An event from the server (see docs/protocol.md). Fields the client does not show are left
/// out: serde ignores fields it is not asked for.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event {
    Welcome {
        nick: String,
        server: String,
    },
    Room {
        room: String,
        /// This life of the room's history: ids start again when it changes.
        epoch: String,
        /// The first members in join order; a big room lists only some of them.
        members: Vec<String>,
        /// How many members the room has.
        count: usize,
        /// Only present when we joined with a cursor (`since`/`epoch`), as after a reconnect:
        /// false when some messages after the cursor are gone.
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
        id: u64,
        from: String,
        text: String,
        ts: u64,
        /// Published through the HTTP API (only present, as `true`, then).
        #[serde(default)]
        api: bool,
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

/// A room we are in, and how far we have read it.
struct Room {
    name: String,
    /// From the room's last `room` event.
    epoch: String,
    /// The id of the last message shown (0: none yet).
    last_id: u64,
}

/// What the reader and the writer both need to know. It lives as long as the program, across
/// connections.
#[derive(Default)]
struct State {
    /// Our nick, from `welcome` and our own `nick` events.
    nick: String,
    /// The nick we chose with `/nick` and the server accepted: asked for again after a
    /// reconnect, when the server has given us a `guest-N` again.
    chosen_nick: Option<String>,
    /// The rooms the server confirmed we are in (by a `room` event), in join order.
    rooms: Vec<Room>,
    /// Where plain lines go: the room we joined last.
    current: Option<String>,
    /// Set by a `welcome`: the connection works, so the next wait to reconnect is short again.
    welcomed: bool,
    /// Set once we start saying goodbye, so the server's answering close is not news.
    quitting: bool,
}

/// What the reader tells the writer.
enum Signal {
    /// The server's `welcome` arrived; these commands take up where the last connection left
    /// off (empty on the first connection).
    Welcome(Vec<Value>),
    /// The answer to the last question asked when quitting arrived (see `quit`).
    Answered,
}

/// How a connection ended.
enum End {
    /// You quit.
    Quit,
    /// The connection was lost, or the server went away for a while: connect again.
    Lost(String),
    /// Connecting again would not help.
    Fatal(String),
}

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --example client -- ws://HOST:PORT/ws");
        return ExitCode::FAILURE;
    };
    let authority = match parse_ws_url(&url) {
        Ok((authority, _path)) => authority,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    smol::block_on(async {
        match run(&url, &authority).await {
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

/// Connects, and connects again whenever a connection is lost, until you quit.
async fn run(url: &str, authority: &str) -> Result<(), String> {
    // Stdin is blocking; `Unblock` reads it on a helper thread so the writer can wait on it.
    let mut input = BufReader::new(Unblock::new(std::io::stdin())).lines();
    let state = RefCell::new(State::default());
    let mut delay = FIRST_RETRY_DELAY;
    let mut ever_connected = false;
    loop {
        let why = match session(url, authority, &state, &mut input).await {
            End::Quit => return Ok(()),
            End::Fatal(why) => return Err(why),
            End::Lost(why) if !ever_connected && !state.borrow().welcomed => return Err(why),
            End::Lost(why) => why,
        };
        if std::mem::take(&mut state.borrow_mut().welcomed) {
            ever_connected = true;
            delay = FIRST_RETRY_DELAY;
        }
        println!("* {why}; reconnecting in {:.1} s", delay.as_secs_f64());
        Timer::after(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// One connection, from the handshake until it ends.
async fn session(url: &str, authority: &str, state: &RefCell<State>, input: &mut Input) -> End {
    let (mut sender, mut receiver) = match connect(url, authority).await {
        Ok(ws) => ws,
        Err(end) => return end,
    };
    let (signal, signals) = smol::channel::bounded(2);
    let reader = read_events(&mut receiver, state, &signal);
    let writer = async {
        let end = write_commands(&mut sender, state, input, &signals).await;
        if let End::Quit = end {
            // The reader now waits for the server's close; don't wait forever.
            Timer::after(GOODBYE_WAIT).await;
        }
        end
    };
    // Whichever finishes first ends the connection: the reader when the server closes it or
    // it breaks, the writer when you quit (or if the server never finishes closing).
    future::or(reader, writer).await
}

/// Resolves the host name, connects over TCP, then does the WebSocket handshake on that socket.
async fn connect(
    url: &str,
    authority: &str,
) -> Result<(WebSocketSender<Socket>, WebSocketReceiver<Socket>), End> {
    let addrs = smol::net::resolve(authority)
        .await
        .map_err(|e| End::Lost(format!("cannot resolve {authority}: {e}")))?;
    let addr = addrs
        .first()
        .ok_or_else(|| End::Lost(format!("{authority} has no address")))?;
    let tcp = Socket::connect(*addr)
        .await
        .map_err(|e| End::Lost(format!("cannot connect to {addr}: {e}")))?;
    match async_tungstenite::client_async(url, tcp).await {
        Ok((ws, _response)) => Ok(ws.split()),
        // The server answered, and refused: 401 (token), 403 (origin, host), 404, …. Only a
        // busy server (503) may say yes later.
        Err(WsError::Http(response)) if response.status() != 503 => {
            let body = response.body().as_deref().unwrap_or_default();
            Err(End::Fatal(format!(
                "the server refused the connection: {} {}",
                response.status(),
                String::from_utf8_lossy(body).trim()
            )))
        }
        Err(e) => Err(End::Lost(format!(
            "WebSocket handshake with {url} failed: {e}"
        ))),
    }
}

/// Prints every event until the connection ends, and says how it ended.
async fn read_events(
    receiver: &mut WebSocketReceiver<Socket>,
    state: &RefCell<State>,
    signal: &Sender<Signal>,
) -> End {
    // What the server's close frame said, if it sent one.
    let mut closed: Option<End> = None;
    let mut lost = String::from("the server went away without closing the connection");
    while let Some(frame) = receiver.next().await {
        match frame {
            Ok(Message::Text(text)) => show_event(text.as_str(), state, signal),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                let why = format!("the server closed the connection: {code} {reason}");
                closed = Some(if RETRY_CODES.contains(&code) {
                    End::Lost(why)
                } else {
                    End::Fatal(why)
                });
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
    if state.borrow().quitting {
        return End::Quit;
    }
    closed.unwrap_or(End::Lost(lost))
}

/// Prints one event in a readable form and keeps `state` up to date.
fn show_event(text: &str, state: &RefCell<State>, signal: &Sender<Signal>) {
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
            state.welcomed = true;
            // Worked out now, before any event of this connection moves the cursors.
            let resume = resume_commands(&state);
            let _ = signal.try_send(Signal::Welcome(resume));
        }
        Event::Room {
            room,
            epoch,
            members,
            count,
            complete,
        } => {
            // The server's answer to a join: the room is now our current room. A room we
            // were in keeps its cursor, unless its history started a new life.
            let mut entry = match state.rooms.iter().position(|r| r.name == room) {
                Some(i) => state.rooms.remove(i),
                None => Room {
                    name: room.clone(),
                    epoch: epoch.clone(),
                    last_id: 0,
                },
            };
            // A new epoch: the server lost the room's history (or part of it) and its ids
            // start again. It says so unasked, too, to members who stayed connected.
            let renewed = entry.epoch != epoch;
            if renewed {
                entry.epoch = epoch;
                entry.last_id = 0;
            }
            state.rooms.push(entry);
            state.current = Some(room.clone());
            println!(
                "* you are in {room}; members: {}",
                member_list(&members, count)
            );
            if complete == Some(false) {
                println!(
                    "* some messages in {room} were missed while you were away \
                     (the server restarted or its history ran out)"
                );
            }
            if renewed && complete.is_some() {
                println!("* {room} has a new epoch: message ids start again");
            }
        }
        Event::Join { room, nick } => println!("* {nick} joined {room}"),
        Event::Leave { room, nick, reason } if reason == "left" => {
            println!("* {nick} left {room}")
        }
        Event::Leave { room, nick, reason } => println!("* {nick} left {room} ({reason})"),
        Event::Message {
            room,
            id,
            from,
            text,
            ts,
            api,
        } => {
            if let Some(entry) = state.rooms.iter_mut().find(|r| r.name == room) {
                // A rejoin replays history we may have shown already.
                if id <= entry.last_id {
                    return;
                }
                entry.last_id = id;
            }
            // Published by an application, not said by a user of that name.
            let tag = if api { "[api] " } else { "" };
            println!("{} [{room}] {tag}<{from}> {text}", clock(ts));
        }
        Event::Nick { old, nick } if old == state.nick => {
            println!("* you are now known as {nick}");
            state.chosen_nick = Some(nick.clone());
            state.nick = nick;
        }
        Event::Nick { old, nick } => println!("* {old} is now known as {nick}"),
        // Our own direct messages come back to us, so we see them in order with the others.
        Event::Direct { from, to, text, ts } if from == state.nick => {
            println!("{} -> {to}: {text}", clock(ts))
        }
        Event::Direct { from, text, ts, .. } => println!("{} <- {from}: {text}", clock(ts)),
        Event::Members { room, .. } if state.quitting && room == LAST_QUESTION_ROOM => {
            let _ = signal.try_send(Signal::Answered);
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
                state.current = state.rooms.last().map(|r| r.name.clone());
            }
        }
    }
}

/// After a reconnect: the commands that take our nick back and rejoin our rooms from the last
/// message shown in each, the current room last (a join makes a room the current one). With a
/// cursor the server sends only what came after it, and says whether that is everything.
fn resume_commands(state: &State) -> Vec<Value> {
    let mut commands = Vec::new();
    if let Some(nick) = state.chosen_nick.as_ref().filter(|n| **n != state.nick) {
        commands.push(json!({"type": "nick", "nick": nick}));
    }
    let current = state.current.as_deref();
    let (others, last): (Vec<&Room>, Vec<&Room>) = state
        .rooms
        .iter()
        .partition(|r| Some(r.name.as_str()) != current);
    for room in others.into_iter().chain(last) {
        commands.push(json!({
            "type": "join", "room": room.name, "since": room.last_id, "epoch": room.epoch
        }));
    }
    commands
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

/// Once the server's welcome is here, takes up where the last connection left off; then
/// sends the lines you type as commands until `/quit` or the end of input.
async fn write_commands(
    sender: &mut WebSocketSender<Socket>,
    state: &RefCell<State>,
    input: &mut Input,
    signals: &Receiver<Signal>,
) -> End {
    let resume = loop {
        match signals.recv().await {
            Ok(Signal::Welcome(commands)) => break commands,
            Ok(Signal::Answered) => {}
            // Not possible while the reader runs, and the reader ends the session.
            Err(_) => return future::pending().await,
        }
    };
    for command in resume {
        if let Err(e) = sender.send(Message::text(command.to_string())).await {
            return End::Lost(format!("connection lost: {e}"));
        }
    }
    // Reading a line is cancel-safe: a line half read when the connection ends stays in the
    // reader's buffer for the next connection.
    while let Some(Ok(line)) = input.next().await {
        let command = match to_command(line.trim_end(), state) {
            Ok(Some(command)) => command,
            Ok(None) => continue,
            Err(Quit) => break,
        };
        if let Err(e) = sender.send(Message::text(command.to_string())).await {
            return End::Lost(format!("connection lost: {e}"));
        }
    }
    quit(sender, state, signals).await;
    End::Quit
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
            state.rooms.retain(|r| r.name != room);
            if state.current.as_deref() == Some(room.as_str()) {
                state.current = state.rooms.last().map(|r| r.name.clone());
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
async fn quit(
    sender: &mut WebSocketSender<Socket>,
    state: &RefCell<State>,
    signals: &Receiver<Signal>,
) {
    state.borrow_mut().quitting = true;
    let question = json!({"type": "who", "room": LAST_QUESTION_ROOM});
    if sender
        .send(Message::text(question.to_string()))
        .await
        .is_ok()
    {
        let timeout = async {
            Timer::after(GOODBYE_WAIT).await;
        };
        let answered = async {
            while let Ok(signal) = signals.recv().await {
                if let Signal::Answered = signal {
                    break;
                }
            }
        };
        future::or(answered, timeout).await;
    }
    let goodbye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    let _ = sender.close(Some(goodbye)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str, epoch: &str, last_id: u64) -> Room {
        Room {
            name: name.into(),
            epoch: epoch.into(),
            last_id,
        }
    }

    #[test]
    fn resuming_takes_the_nick_back_and_rejoins_with_cursors_the_current_room_last() {
        let state = State {
            nick: "guest-7".into(),
            chosen_nick: Some("ada".into()),
            rooms: vec![
                room("lobby", "e-1", 3),
                room("dev", "e-2", 41),
                room("ops", "e-3", 0),
            ],
            current: Some("dev".into()),
            ..State::default()
        };
        assert_eq!(
            resume_commands(&state),
            vec![
                json!({"type": "nick", "nick": "ada"}),
                json!({"type": "join", "room": "lobby", "since": 3, "epoch": "e-1"}),
                json!({"type": "join", "room": "ops", "since": 0, "epoch": "e-3"}),
                json!({"type": "join", "room": "dev", "since": 41, "epoch": "e-2"}),
            ]
        );
    }

    #[test]
    fn resuming_asks_for_no_nick_it_has_or_never_chose() {
        let mut state = State {
            nick: "ada".into(),
            chosen_nick: Some("ada".into()),
            ..State::default()
        };
        assert!(resume_commands(&state).is_empty());
        state.chosen_nick = None;
        state.nick = "guest-2".into();
        assert!(resume_commands(&state).is_empty());
    }
}
