//! The Lua scripts that change shared state in Redis. Each runs atomically, so two nodes can
//! never interleave inside one: ids, history, membership and the events that announce them
//! change together. Names (nicks, rooms) are checked by the server before they get here and
//! contain only `[A-Za-z0-9_.-]`, so the scripts can put them into JSON without escaping.
//!
//! Keys (all under `smolchat:`; see docs/scale-out.md):
//! - `room:R` hash: `epoch`, `seq` (last message id), `ev` (last room event), `joins`
//! - `room:R:history` list of encoded `message` events, capped at `--history`
//! - `room:R:members` sorted set of member ids, scored by join order
//! - `rooms` set of room names
//! - `member:M` hash: `nick`; `member:M:rooms` set of the member's rooms
//! - `nick:LOWERCASED` → member id (who holds a nick)
//! - `node:N:alive` (expires), `node:N:members` set, `nodes` set
//! - `gone:M` (expires): tombstone of a departed member, so a late script cannot revive it
//! - `guests`, `nickops`: counters
//!
//! Channels: `smolchat:room:R` carries every room event as `EV KIND N SUBJECT FRAME` (KIND `m`
//! message with id N, `j` join with N members after, `l` leave with N members before, `n`
//! rename in a room of N members); `smolchat:node:N` carries direct messages as
//! `KEY.SERIAL FRAME`.

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local P = 'smolchat:'
local function publish_room(room, kind, n, subject, frame)
  local ev = redis.call('HINCRBY', P..'room:'..room, 'ev', 1)
  redis.call('PUBLISH', P..'room:'..room, ev..' '..kind..' '..n..' '..subject..' '..frame)
  return ev
end
local function part(room, mid, nick, reason)
  local mk = P..'room:'..room..':members'
  if redis.call('ZREM', mk, mid) == 1 then
    redis.call('SREM', P..'member:'..mid..':rooms', room)
    local before = redis.call('ZCARD', mk) + 1
    publish_room(room, 'l', before, mid,
      '{"type":"leave","room":"'..room..'","nick":"'..nick..'","reason":"'..reason..'"}')
    return 1
  end
  return 0
end
local function bye(mid, reason)
  redis.call('SET', P..'gone:'..mid, '1', 'EX', 3600)
  local nick = redis.call('HGET', P..'member:'..mid, 'nick') or ''
  for _, room in ipairs(redis.call('SMEMBERS', P..'member:'..mid..':rooms')) do
    part(room, mid, nick, reason)
  end
  if nick ~= '' then
    local k = P..'nick:'..string.lower(nick)
    if redis.call('GET', k) == mid then redis.call('DEL', k) end
  end
  redis.call('DEL', P..'member:'..mid, P..'member:'..mid..':rooms')
  local node = string.match(mid, '^([^.]+)')
  redis.call('SREM', P..'node:'..node..':members', mid)
end
local function reap(node, reason)
  local n = 0
  for _, mid in ipairs(redis.call('SMEMBERS', P..'node:'..node..':members')) do
    bye(mid, reason)
    n = n + 1
  end
  redis.call('DEL', P..'node:'..node..':members')
  redis.call('SREM', P..'nodes', node)
  return n
end
local function gone(mid)
  return redis.call('EXISTS', P..'gone:'..mid) == 1
end
"#;

/// ARGV: member id, node. Registers a new member under the next free `guest-N`; returns it,
/// or nil if the member is already gone.
pub const GUEST: &str = r#"
local mid = ARGV[1]
if gone(mid) then return false end
local nick
repeat
  nick = 'guest-'..redis.call('INCR', P..'guests')
until redis.call('SET', P..'nick:'..nick, mid, 'NX')
redis.call('HSET', P..'member:'..mid, 'nick', nick)
redis.call('SADD', P..'node:'..ARGV[2]..':members', mid)
return nick
"#;

/// ARGV: member id, new nick. Returns `{'ok', old}`, `{'taken'}` or `{'gone'}`; announces the
/// rename in every room of the member.
pub const NICK: &str = r#"
local mid, new = ARGV[1], ARGV[2]
local mkey = P..'member:'..mid
if gone(mid) then return {'gone'} end
local old = redis.call('HGET', mkey, 'nick')
if not old then return {'gone'} end
local nl, ol = string.lower(new), string.lower(old)
if nl ~= ol then
  local holder = redis.call('GET', P..'nick:'..nl)
  if holder and holder ~= mid then return {'taken'} end
  redis.call('SET', P..'nick:'..nl, mid)
  if redis.call('GET', P..'nick:'..ol) == mid then redis.call('DEL', P..'nick:'..ol) end
end
redis.call('HSET', mkey, 'nick', new)
local tag = redis.call('INCR', P..'nickops')
local frame = '{"type":"nick","old":"'..old..'","nick":"'..new..'"}'
for _, room in ipairs(redis.call('SMEMBERS', mkey..':rooms')) do
  publish_room(room, 'n', redis.call('ZCARD', P..'room:'..room..':members'), mid..'#'..tag, frame)
end
return {'ok', old}
"#;

/// ARGV: member id, room, epoch for a new room, presence limit. Adds the member (announcing
/// it) unless it is in already (a resync). Returns `{'ok', epoch, last id, event number,
/// count, first nicks, history}` or `{'gone'}`.
pub const JOIN: &str = r#"
local mid, room = ARGV[1], ARGV[2]
if gone(mid) or redis.call('EXISTS', P..'member:'..mid) == 0 then return {'gone'} end
local rk = P..'room:'..room
local mk = rk..':members'
redis.call('HSETNX', rk, 'epoch', ARGV[3])
redis.call('SADD', P..'rooms', room)
local ev
if redis.call('ZSCORE', mk, mid) then
  ev = tonumber(redis.call('HGET', rk, 'ev') or '0')
else
  redis.call('ZADD', mk, redis.call('HINCRBY', rk, 'joins', 1), mid)
  redis.call('SADD', P..'member:'..mid..':rooms', room)
  local nick = redis.call('HGET', P..'member:'..mid, 'nick')
  ev = publish_room(room, 'j', redis.call('ZCARD', mk), mid,
    '{"type":"join","room":"'..room..'","nick":"'..nick..'"}')
end
local nicks = {}
for i, m in ipairs(redis.call('ZRANGE', mk, 0, tonumber(ARGV[4]) - 1)) do
  nicks[i] = redis.call('HGET', P..'member:'..m, 'nick') or '?'
end
return {'ok', redis.call('HGET', rk, 'epoch'), tonumber(redis.call('HGET', rk, 'seq') or '0'),
  ev, redis.call('ZCARD', mk), nicks, redis.call('LRANGE', rk..':history', 0, -1)}
"#;

/// ARGV: member id, room. Returns 1 if the member left (announced), 0 if it was not in.
pub const LEAVE: &str = r#"
local nick = redis.call('HGET', P..'member:'..ARGV[1], 'nick') or ''
return part(ARGV[2], ARGV[1], nick, 'left')
"#;

/// ARGV: member id, room, event text before the id, event text after it, history size.
/// Assigns the next id, appends to the capped history and publishes, in one step. Returns the
/// id, or -1 if the member is not in the room.
pub const SAY: &str = r#"
local rk = P..'room:'..ARGV[2]
if not redis.call('ZSCORE', rk..':members', ARGV[1]) then return -1 end
local id = redis.call('HINCRBY', rk, 'seq', 1)
local frame = ARGV[3]..id..ARGV[4]
local cap = tonumber(ARGV[5])
if cap > 0 then
  redis.call('RPUSH', rk..':history', frame)
  redis.call('LTRIM', rk..':history', -cap, -1)
end
publish_room(ARGV[2], 'm', id, ARGV[1], frame)
return id
"#;

/// ARGV: lowercased recipient nick, event text before the recipient's nick, text after it,
/// sender's member id. Publishes to the recipient's node (unless it is the sender) and returns
/// `{recipient id, event}`, or nil for nobody.
pub const DIRECT: &str = r#"
local mid = redis.call('GET', P..'nick:'..ARGV[1])
if not mid then return false end
local nick = redis.call('HGET', P..'member:'..mid, 'nick')
if not nick then return false end
local frame = ARGV[2]..nick..ARGV[3]
if mid ~= ARGV[4] then
  local node, target = string.match(mid, '^([^.]+)%.(.+)$')
  redis.call('PUBLISH', P..'node:'..node, target..' '..frame)
end
return {mid, frame}
"#;

/// ARGV: room, offset, page size. Returns `{count, nicks}`.
pub const WHO: &str = r#"
local mk = P..'room:'..ARGV[1]..':members'
local offset = tonumber(ARGV[2])
local nicks = {}
for i, m in ipairs(redis.call('ZRANGE', mk, offset, offset + tonumber(ARGV[3]) - 1)) do
  nicks[i] = redis.call('HGET', P..'member:'..m, 'nick') or '?'
end
return {redis.call('ZCARD', mk), nicks}
"#;

/// Returns `{name, count, name, count, ...}` for every room.
pub const ROOMS: &str = r#"
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', P..'rooms')) do
  out[#out + 1] = room
  out[#out + 1] = redis.call('ZCARD', P..'room:'..room..':members')
end
return out
"#;

/// ARGV: room, epoch for a new room. Returns `{epoch, last id, event number, history}`.
pub const STATE: &str = r#"
local rk = P..'room:'..ARGV[1]
redis.call('HSETNX', rk, 'epoch', ARGV[2])
return {redis.call('HGET', rk, 'epoch'), tonumber(redis.call('HGET', rk, 'seq') or '0'),
  tonumber(redis.call('HGET', rk, 'ev') or '0'), redis.call('LRANGE', rk..':history', 0, -1)}
"#;

/// ARGV: member id, leave reason. The member is gone: leaves every room, frees its nick.
pub const BYE: &str = r#"
bye(ARGV[1], ARGV[2])
return 1
"#;

/// ARGV: node, member id, nick, epoch prefix for new rooms, rooms... Registers a live member
/// again after Redis lost it (a restart without persistence) or a reaper took it, without
/// announcing anything. A nick someone else took meanwhile stays theirs.
pub const RESTORE: &str = r#"
local mid, nick = ARGV[2], ARGV[3]
if gone(mid) then return 0 end
local nk = P..'nick:'..string.lower(nick)
if not redis.call('GET', nk) then redis.call('SET', nk, mid) end
redis.call('HSET', P..'member:'..mid, 'nick', nick)
redis.call('SADD', P..'node:'..ARGV[1]..':members', mid)
for i = 5, #ARGV do
  local room = ARGV[i]
  local rk = P..'room:'..room
  redis.call('HSETNX', rk, 'epoch', ARGV[4]..'-'..i)
  redis.call('SADD', P..'rooms', room)
  if not redis.call('ZSCORE', rk..':members', mid) then
    redis.call('ZADD', rk..':members', redis.call('HINCRBY', rk, 'joins', 1), mid)
    redis.call('SADD', P..'member:'..mid..':rooms', room)
  end
end
return 1
"#;

/// ARGV: node, time to live in ms. Renews the node's heartbeat; returns 1 if it was still
/// alive, 0 if it had expired (or this is the first beat).
pub const HEARTBEAT: &str = r#"
local alive = P..'node:'..ARGV[1]..':alive'
local was = redis.call('EXISTS', alive)
redis.call('SET', alive, '1', 'PX', ARGV[2])
redis.call('SADD', P..'nodes', ARGV[1])
return was
"#;

/// ARGV: this node. Removes the members of every other node whose heartbeat expired, with
/// leave reason `node_lost`. Returns how many members were removed.
pub const REAP: &str = r#"
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
  if node ~= ARGV[1] and redis.call('EXISTS', P..'node:'..node..':alive') == 0 then
    n = n + reap(node, 'node_lost')
  end
end
return n
"#;

/// ARGV: this node. A clean exit: every member leaves with reason `shutdown`.
pub const GOODBYE: &str = r#"
redis.call('DEL', P..'node:'..ARGV[1]..':alive')
return reap(ARGV[1], 'shutdown')
"#;

/// Every script with the prelude, compiled once.
pub struct Scripts {
    pub guest: redis::Script,
    pub nick: redis::Script,
    pub join: redis::Script,
    pub leave: redis::Script,
    pub say: redis::Script,
    pub direct: redis::Script,
    pub who: redis::Script,
    pub rooms: redis::Script,
    pub state: redis::Script,
    pub bye: redis::Script,
    pub restore: redis::Script,
    pub heartbeat: redis::Script,
    pub reap: redis::Script,
    pub goodbye: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        let s = |body: &str| redis::Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            guest: s(GUEST),
            nick: s(NICK),
            join: s(JOIN),
            leave: s(LEAVE),
            say: s(SAY),
            direct: s(DIRECT),
            who: s(WHO),
            rooms: s(ROOMS),
            state: s(STATE),
            bye: s(BYE),
            restore: s(RESTORE),
            heartbeat: s(HEARTBEAT),
            reap: s(REAP),
            goodbye: s(GOODBYE),
        }
    }
}
