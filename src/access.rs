//! Access rules: which rooms a client may enter, see into, and reach others through. The one
//! place a token's `rooms` claim is checked.
//!
//! A client's [`Access`] is made once, when the hub registers it, from the user its token
//! proved (or none, for a guest). Every path that touches a room asks it: a v1 `join` (and so
//! history and recovery, which come with a join), `who`, `rooms`, `direct`, and in raw mode
//! the group a connection opens (refused before the upgrade). The table in docs/protocol.md
//! ("Who may do what") lists every case; this module is what makes it true.
//!
//! A client limited by a claim learns nothing about rooms outside it: a refusal reads the
//! same whether the room exists or not, `rooms` lists only rooms the claim allows, and a
//! `direct` reaches only nicks in those rooms ([`Access::reach`]): anyone else reads as
//! "nobody is called that", like a nick nobody holds. Guests and users without a claim may
//! go anywhere. The HTTP API's key sees everything; it is no client and has no `Access`.

use crate::client::User;
use crate::protocol::{Error, ErrorCode};

/// The rooms a client may enter and see. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The rooms its token's claim allows, sorted, each once; `None`: any room.
    rooms: Option<Box<[String]>>,
}

impl Access {
    /// What `user` may do (`None`: a guest, who may go anywhere).
    pub fn of(user: Option<&User>) -> Access {
        let rooms = user.and_then(|u| u.rooms.as_ref()).map(|rooms| {
            let mut rooms = rooms.clone();
            rooms.sort_unstable();
            rooms.dedup();
            rooms.into_boxed_slice()
        });
        Access { rooms }
    }

    /// True when the client may enter and see `room`.
    pub fn allows(&self, room: &str) -> bool {
        match &self.rooms {
            Some(rooms) => rooms.binary_search_by(|r| r.as_str().cmp(room)).is_ok(),
            None => true,
        }
    }

    /// `Ok` when the client may enter and see `room`; else the `forbidden` error, whose text
    /// depends only on the name asked for, never on whether the room exists.
    pub fn check(&self, room: &str) -> Result<(), Error> {
        if self.allows(room) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::Forbidden,
            format!("your token does not allow room {room:?}"),
        ))
    }

    /// The rooms a claim limits the client to, sorted (`None`: no limit). `rooms` lists
    /// only these.
    pub fn rooms(&self) -> Option<&[String]> {
        self.rooms.as_deref()
    }

    /// Where a `direct` from this client may reach: only nicks that are members of one of
    /// these rooms, sorted (`None`: anyone). A nick outside them is answered as unknown.
    pub fn reach(&self) -> Option<Vec<String>> {
        self.rooms.as_ref().map(|rooms| rooms.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(rooms: Option<&[&str]>) -> User {
        User {
            name: "ada".into(),
            rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_claim_allows_its_rooms_and_nothing_else() {
        let limited = Access::of(Some(&user(Some(&["ops", "dev", "ops"]))));
        assert!(limited.allows("dev") && limited.allows("ops"));
        assert!(!limited.allows("lobby"));
        assert_eq!(
            limited.rooms(),
            Some(&["dev".to_string(), "ops".to_string()][..])
        );
        let refused = limited.check("layoffs").unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert_eq!(
            refused.message,
            "your token does not allow room \"layoffs\""
        );
        for free in [Access::of(None), Access::of(Some(&user(None)))] {
            assert!(free.allows("anything") && free.check("lobby").is_ok());
            assert_eq!((free.rooms(), free.reach()), (None, None));
        }
        let empty = Access::of(Some(&user(Some(&[]))));
        assert!(!empty.allows("lobby"), "an empty claim allows no room");
    }
}
