//! The Lua scripts that read and change the shared state in Redis. Each runs atomically, so two
//! nodes never interleave inside one: ids, history, membership, holds and the events that
//! announce them change together.
//!
//! Data enters a script as arguments the bridge passes as strings (ids, offsets and limits
//! included: nothing the bridge sends becomes a Lua float), and leaves as a reply of strings,
//! integers and arrays, or as a channel payload. Scripts write payloads and history records as
//! plain space-separated fields with free text last ([`super::wire`] has the layouts and reads
//! them); they never build JSON.
//!
//! Every script costs O(log N) in the number of rooms or members, plus what it touches by
//! nature (a member's rooms, a user's connections, one page, one room's history), except the
//! two that walk a node's members, REAP and GOODBYE, which take at most a batch per call.
//!
//! Keys, all under `smolchat:` (R a room, M a member id `NODE.KEY.SERIAL`, N a node, A an
//! address as a decimal number):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `room:R` | hash | `epoch`, `seq` (last message id), `ev` (last room event), `joins` (join counter), `bytes` (history bytes), `holder` (address holding it, while it has members), `era` (the era its ids belong to) |
//! | `room:R:history` | list | records `ID TS SIZE NICK TEXT`, oldest first, within `--history` and `--history-bytes` |
//! | `room:R:members` | sorted set | member ids by join order, each user once (through one of its connections) |
//! | `room:R:extra` | set | the user's other connections in the room, besides the one in `members` |
//! | `room:R:addrs` | hash | address → members in `members` from it (rooms other than the default) |
//! | `rooms` | sorted set | every room, score 0 (so sorted by name) |
//! | `rooms:empty` | sorted set | empty rooms but the default, by when they became empty |
//! | `address:A` | string | rooms address A holds |
//! | `member:M` | hash | `nick`, `addr`, `user` (`1` for a user's connection) |
//! | `member:M:rooms` | set | the member's rooms |
//! | `nick:NICK` | string | member holding NICK (lowercased); for a user, one of its connections |
//! | `user:NAME` | set | the connections of user NAME (lowercased), on every node |
//! | `node:N:alive` | string, expires | N's heartbeat |
//! | `node:N:members` | set | N's members |
//! | `nodes` | set | nodes with members or a heartbeat |
//! | `counters` | hash | `guest`, `rename`, `emptied`, `epochs` (epochs begun by `current` in this era) |
//! | `life` | string | an id of this Redis data set, set by the first node to see it empty |
//! | `run` | string | the Redis `run_id` this data set was last written under (WITNESS) |
//! | `era` | string | set when Redis came back from a restart that may have lost writes; a room whose `era` field differs starts a new epoch |
//!
//! Channels: `smolchat:room:R` (room events), `smolchat:node:N` (direct messages for N's
//! clients, and N's heartbeat echo).
//!
//! A user (a client that proved its name with a token) may be connected several times, on
//! several nodes: each connection is a member of its own, and they share the nick. A room
//! lists the user once: the connection that brought the user in is in `room:R:members` and
//! is announced; the others join and leave silently through `room:R:extra`, and one of them
//! takes the listed one's place when it leaves, so the user's `leave` comes with its last
//! connection in the room. Guests are one connection each, and none of this applies to them.

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local P = 'smolchat:'
-- A number as digits: Lua's own conversion switches to exponents above 1e14.
local function int(n) return string.format('%d', n) end

-- Adds `n` to the rooms address `addr` holds.
local function hold(addr, n)
  local k = P..'address:'..addr
  if redis.call('INCRBY', k, n) <= 0 then redis.call('DEL', k) end
end

local function exists(room)
  return redis.call('ZSCORE', P..'rooms', room) ~= false
end

local function create(room, epoch)
  redis.call('HSET', P..'room:'..room, 'epoch', epoch, 'era', redis.call('GET', P..'era') or '')
  redis.call('ZADD', P..'rooms', 0, room)
end

-- Brings an existing room into the current era (see WITNESS): a room last written before
-- Redis came back from an older state may have handed out ids that Redis no longer knows, so
-- it starts a new epoch, with an empty history, before anything reads or writes its ids.
-- Every script that reads or gives a room's ids calls this first. Returns the room's key.
local function current(room)
  local rk = P..'room:'..room
  local era = redis.call('GET', P..'era')
  if era and exists(room) and redis.call('HGET', rk, 'era') ~= era then
    local n = redis.call('HINCRBY', P..'counters', 'epochs', 1)
    redis.call('HSET', rk, 'epoch', era..'-'..int(n), 'seq', 0, 'bytes', 0, 'era', era)
    redis.call('DEL', rk..':history')
  end
  return rk
end

-- Announces `fields` in `room` under the room's epoch and next event number. The epoch lets
-- a node that still knows the room under an older one (Redis lost it, or came back older)
-- find out from the first event and read the room again.
local function publish(room, fields)
  local rk = current(room)
  local ev = redis.call('HINCRBY', rk, 'ev', 1)
  local epoch = redis.call('HGET', rk, 'epoch') or ''
  redis.call('PUBLISH', rk, epoch..' '..int(ev)..' '..fields)
  return ev
end

-- The key of the connections of member `mid`'s user, if `mid` is a user's connection.
local function user_of(mid)
  local m = redis.call('HMGET', P..'member:'..mid, 'user', 'nick')
  if m[1] ~= '1' or not m[2] then return nil end
  return P..'user:'..string.lower(m[2])
end

-- Another connection of member `mid`'s user for which `test` holds, if `mid` is a user's.
-- (A walk over the user's connections: a user has few, and guests have none.)
local function sibling(mid, test)
  local uk = user_of(mid)
  if not uk then return nil end
  for _, c in ipairs(redis.call('SMEMBERS', uk)) do
    if c ~= mid and test(c) then return c end
  end
  return nil
end

-- Makes room for one more room besides the default one: below `max` others, nothing to do;
-- else the least recently emptied room goes, keys and all. False if every room has members.
local function make_room(default, max)
  local others = redis.call('ZCARD', P..'rooms')
  if exists(default) then others = others - 1 end
  if others < max then return true end
  local victim = redis.call('ZRANGE', P..'rooms:empty', 0, 0)[1]
  if not victim then return false end
  local rk = P..'room:'..victim
  redis.call('DEL', rk, rk..':history', rk..':members', rk..':extra', rk..':addrs')
  redis.call('ZREM', P..'rooms', victim)
  redis.call('ZREM', P..'rooms:empty', victim)
  return true
end

-- Makes member `mid` of address `addr` a member of `room` (which exists), silently. The
-- address that makes a room other than the default non-empty holds it. Returns the count.
local function add(room, mid, addr, default)
  local rk = P..'room:'..room
  local mk = rk..':members'
  local before = redis.call('ZCARD', mk)
  redis.call('ZADD', mk, redis.call('HINCRBY', rk, 'joins', 1), mid)
  redis.call('SADD', P..'member:'..mid..':rooms', room)
  if room ~= default then
    redis.call('HINCRBY', rk..':addrs', addr, 1)
    if before == 0 then
      redis.call('ZREM', P..'rooms:empty', room)
      redis.call('HSET', rk, 'holder', addr)
      hold(addr, 1)
    end
  end
  return before + 1
end

-- Makes user connection `mid` a member of `room`, silently, if another connection of its user
-- is listed there already: the room lists each user once. False if none is.
local function accompany(room, mid)
  local rk = P..'room:'..room
  local mk = rk..':members'
  if not sibling(mid, function(c) return redis.call('ZSCORE', mk, c) end) then return false end
  redis.call('SADD', rk..':extra', mid)
  redis.call('SADD', P..'member:'..mid..':rooms', room)
  return true
end

-- Gives a message from `nick` in `room` the room's next id and keeps it in the history,
-- forgetting the oldest while over `cap` messages or `max` bytes, as a single node does.
-- `base`: the size of the message's event with an empty nick and id 0; `api`: published
-- through the HTTP API, which the record marks on the nick (`wire::API_MARK`). Returns the id.
local function post(room, ts, nick, text, base, cap, max, api)
  local rk = current(room)
  local id = redis.call('HINCRBY', rk, 'seq', 1)
  local size = tonumber(base) + #nick + #int(id) - 1
  cap, max = tonumber(cap), tonumber(max)
  local hk = rk..':history'
  if cap > 0 and size <= max then
    local from = nick
    if api then from = 'api:'..nick end
    redis.call('RPUSH', hk, int(id)..' '..ts..' '..int(size)..' '..from..' '..text)
    local bytes = redis.call('HINCRBY', rk, 'bytes', size)
    while redis.call('LLEN', hk) > cap or bytes > max do
      local oldest = redis.call('LPOP', hk)
      bytes = redis.call('HINCRBY', rk, 'bytes', -tonumber(string.match(oldest, '^%d+ %d+ (%d+) ')))
    end
  else
    -- Not kept: the history must stay a run of ids that ends with the newest.
    redis.call('DEL', hk)
    redis.call('HSET', rk, 'bytes', 0)
  end
  return id
end

-- Takes `mid` out of `room` and announces why, unless its user is still in the room through
-- another connection, which then takes its place in the list, silently. The hold stays with an
-- address while a member from it is in the room, then passes to the first remaining member's
-- address. A room left empty may be evicted. Returns false if `mid` was not in.
local function part(room, mid, reason, default)
  local rk = P..'room:'..room
  local mk = rk..':members'
  local ek = rk..':extra'
  local member = P..'member:'..mid
  if redis.call('SREM', ek, mid) == 1 then
    redis.call('SREM', member..':rooms', room)
    return true -- the user is still listed, through another connection
  end
  local score = redis.call('ZSCORE', mk, mid)
  if not score then return false end
  redis.call('ZREM', mk, mid)
  redis.call('SREM', member..':rooms', room)
  local heir = sibling(mid, function(c) return redis.call('SISMEMBER', ek, c) == 1 end)
  if heir then
    redis.call('SREM', ek, heir)
    redis.call('ZADD', mk, score, heir) -- in the user's place in the join order
  end
  local nick = redis.call('HGET', member, 'nick') or ''
  local left = redis.call('ZCARD', mk)
  if room ~= default then
    local addr = redis.call('HGET', member, 'addr') or ''
    local ak = rk..':addrs'
    if redis.call('HINCRBY', ak, addr, -1) <= 0 then redis.call('HDEL', ak, addr) end
    if heir then
      redis.call('HINCRBY', ak, redis.call('HGET', P..'member:'..heir, 'addr') or '', 1)
    end
    if redis.call('HGET', rk, 'holder') == addr and redis.call('HEXISTS', ak, addr) == 0 then
      hold(addr, -1)
      local first = redis.call('ZRANGE', mk, 0, 0)[1]
      if first then
        local first_addr = redis.call('HGET', P..'member:'..first, 'addr') or ''
        redis.call('HSET', rk, 'holder', first_addr)
        hold(first_addr, 1)
      else
        redis.call('HDEL', rk, 'holder')
      end
    end
    if left == 0 then
      local tick = redis.call('HINCRBY', P..'counters', 'emptied', 1)
      redis.call('ZADD', P..'rooms:empty', tick, room)
    end
  end
  if heir then return true end
  publish(room, 'l '..int(left + 1)..' '..mid..' '..nick..' '..reason)
  return true
end

-- Member `mid` is gone: it leaves every room with `reason`, its keys go, and its nick is free
-- (a user's, once its last connection is gone).
local function bye(mid, reason, default)
  local member = P..'member:'..mid
  for _, room in ipairs(redis.call('SMEMBERS', member..':rooms')) do
    part(room, mid, reason, default)
  end
  local nick = redis.call('HGET', member, 'nick')
  if nick then
    local nk = P..'nick:'..string.lower(nick)
    local uk = user_of(mid)
    if uk then redis.call('SREM', uk, mid) end
    if redis.call('GET', nk) == mid then
      local heir = uk and redis.call('SRANDMEMBER', uk)
      if heir then redis.call('SET', nk, heir) else redis.call('DEL', nk) end
    end
  end
  redis.call('DEL', member, member..':rooms')
  redis.call('SREM', P..'node:'..string.match(mid, '^([^.]+)')..':members', mid)
end
"#;

/// ARGV: member id, node, address, user name (empty for a guest), the most connections one
/// user may have. Registers a new member: a guest under the next free `guest-N`; a user's
/// connection under the user's name, which it shares with the user's other connections
/// (guests cannot rename when tokens are in use, and a user's name cannot look like a guest's:
/// the name is free or the user's own). Returns the nick, or nil (nothing registered) for a
/// user who has that many connections on all nodes already.
pub const REGISTER: &str = r#"
local mid, user = ARGV[1], ARGV[4]
local member = P..'member:'..mid
local nick
if user ~= '' then
  if redis.call('SCARD', P..'user:'..string.lower(user)) >= tonumber(ARGV[5]) then
    return false
  end
  nick = user
  redis.call('SET', P..'nick:'..string.lower(user), mid, 'NX')
  redis.call('SADD', P..'user:'..string.lower(user), mid)
  redis.call('HSET', member, 'user', '1')
else
  repeat
    nick = 'guest-'..int(redis.call('HINCRBY', P..'counters', 'guest', 1))
  until redis.call('SET', P..'nick:'..nick, mid, 'NX')
end
redis.call('HSET', member, 'nick', nick, 'addr', ARGV[3])
redis.call('SADD', P..'node:'..ARGV[2]..':members', mid)
redis.call('SADD', P..'nodes', ARGV[2])
return nick
"#;

/// ARGV: member id, new nick. Returns `{'ok', old}`, `{'taken'}` or `{'gone'}`; announces the
/// rename in each of the member's rooms, with one tag.
pub const NICK: &str = r#"
local mid, new = ARGV[1], ARGV[2]
local member = P..'member:'..mid
local old = redis.call('HGET', member, 'nick')
if not old then return {'gone'} end
local nl, ol = string.lower(new), string.lower(old)
if nl ~= ol then
  local holder = redis.call('GET', P..'nick:'..nl)
  if holder and holder ~= mid then return {'taken'} end
  redis.call('SET', P..'nick:'..nl, mid)
  if redis.call('GET', P..'nick:'..ol) == mid then redis.call('DEL', P..'nick:'..ol) end
end
redis.call('HSET', member, 'nick', new)
local tag = redis.call('HINCRBY', P..'counters', 'rename', 1)
for _, room in ipairs(redis.call('SMEMBERS', member..':rooms')) do
  local count = redis.call('ZCARD', P..'room:'..room..':members')
  publish(room, 'n '..int(count)..' '..mid..' '..int(tag)..' '..old..' '..new)
end
return {'ok', old}
"#;

/// ARGV: member id, room, epoch for a new room, presence limit, default room, `--max-rooms`,
/// `--max-rooms-per-address`. Adds the member and announces it, unless it is in already (a
/// resync) or its user is (then it is added silently). Returns `{'ok', epoch, last id, event,
/// count, first nicks, history records}`, `{'refused', 'rooms' | 'address'}` or `{'gone'}`.
pub const JOIN: &str = r#"
local mid, room, default = ARGV[1], ARGV[2], ARGV[5]
local member = P..'member:'..mid
local addr = redis.call('HGET', member, 'addr')
if not addr then return {'gone'} end
local rk = current(room)
local mk = rk..':members'
local ev
if redis.call('SISMEMBER', member..':rooms', room) == 1 or accompany(room, mid) then
  ev = tonumber(redis.call('HGET', rk, 'ev') or '0')
else
  local known = exists(room)
  local empty = room ~= default and (not known or redis.call('ZCARD', mk) == 0)
  if empty and tonumber(redis.call('GET', P..'address:'..addr) or '0') >= tonumber(ARGV[7]) then
    return {'refused', 'address'}
  end
  if not known then
    if room ~= default and not make_room(default, tonumber(ARGV[6])) then
      return {'refused', 'rooms'}
    end
    create(room, ARGV[3])
  end
  local count = add(room, mid, addr, default)
  ev = publish(room, 'j '..int(count)..' '..mid..' '..redis.call('HGET', member, 'nick'))
end
local nicks = {}
local limit = tonumber(ARGV[4])
if limit > 0 then
  for i, m in ipairs(redis.call('ZRANGE', mk, 0, limit - 1)) do
    nicks[i] = redis.call('HGET', P..'member:'..m, 'nick') or ''
  end
end
local state = redis.call('HMGET', rk, 'epoch', 'seq')
return {'ok', state[1], tonumber(state[2] or '0'), ev, redis.call('ZCARD', mk), nicks,
  redis.call('LRANGE', rk..':history', 0, -1)}
"#;

/// ARGV: member id, room, default room. Returns `'left'` (announced, unless the member's user
/// is still in the room through another connection), `'not_member'` or `'gone'`.
pub const LEAVE: &str = r#"
if redis.call('EXISTS', P..'member:'..ARGV[1]) == 0 then return 'gone' end
if part(ARGV[2], ARGV[1], 'left', ARGV[3]) then return 'left' end
return 'not_member'
"#;

/// ARGV: member id, room, timestamp, text, size of the message event with an empty nick and
/// id 0, `--history`, `--history-bytes`. Gives the message the room's next id, keeps it in the
/// history (forgetting the oldest while over either bound, as a single node does) and
/// publishes it, in one step. Returns the id, -1 if the member is not in the room, -2 if it
/// is gone.
pub const SAY: &str = r#"
local mid, room = ARGV[1], ARGV[2]
local member = P..'member:'..mid
local nick = redis.call('HGET', member, 'nick')
if not nick then return -2 end
if redis.call('SISMEMBER', member..':rooms', room) == 0 then return -1 end
local id = post(room, ARGV[3], nick, ARGV[4], ARGV[5], ARGV[6], ARGV[7], false)
publish(room, 'm '..int(id)..' '..ARGV[3]..' '..mid..' '..nick..' '..ARGV[4])
return id
"#;

/// ARGV: room, timestamp, from (a valid nick), text, size of the message event with an empty
/// nick and id 0 (and `"api":true`), `--history`, `--history-bytes`, default room,
/// `--max-rooms`, epoch for a new room. A message from the HTTP API: like SAY, but by no
/// member, in a room created if need be (within `--max-rooms`, evicting the least recently
/// emptied room; empty, so held by nobody, and evicted in turn like a room its last member
/// left). Returns the id, or -1 if the room cannot be created.
pub const PUBLISH: &str = r#"
local room, default = ARGV[1], ARGV[8]
if not exists(room) then
  if room ~= default then
    if not make_room(default, tonumber(ARGV[9])) then return -1 end
    local tick = redis.call('HINCRBY', P..'counters', 'emptied', 1)
    redis.call('ZADD', P..'rooms:empty', tick, room)
  end
  create(room, ARGV[10])
end
local id = post(room, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], true)
publish(room, 'a '..int(id)..' '..ARGV[2]..' '..ARGV[3]..' '..ARGV[4])
return id
"#;

/// ARGV: sender's member id, recipient's nick lowercased, timestamp, text, then `1` and rooms
/// if the sender may reach only members of those rooms (its token's claim), else `0`. The
/// message goes to every connection of the recipient (a user may have several): on the
/// recipient's node channel for those on other nodes; those on the sender's node are
/// returned, for its hub to deliver. Returns `{'ok', recipient's nick, member ids on the
/// sender's node...}`, `{'unknown'}` (also for a recipient outside the rooms) or `{'gone'}`.
pub const DIRECT: &str = r#"
local sender = ARGV[1]
local from = redis.call('HGET', P..'member:'..sender, 'nick')
if not from then return {'gone'} end
local holder = redis.call('GET', P..'nick:'..ARGV[2])
local to = holder and redis.call('HGET', P..'member:'..holder, 'nick')
if not to then return {'unknown'} end
local targets = {holder}
local uk = user_of(holder)
if uk then targets = redis.call('SMEMBERS', uk) end
if ARGV[5] == '1' then
  local allowed = {}
  for i = 6, #ARGV do allowed[ARGV[i]] = true end
  local reachable = false
  for _, mid in ipairs(targets) do
    for _, room in ipairs(redis.call('SMEMBERS', P..'member:'..mid..':rooms')) do
      if allowed[room] then reachable = true break end
    end
    if reachable then break end
  end
  if not reachable then return {'unknown'} end
end
local here = string.match(sender, '^([^.]+)')
local reply = {'ok', to}
for _, mid in ipairs(targets) do
  local node, client = string.match(mid, '^([^.]+)%.(.+)$')
  if node == here then
    reply[#reply + 1] = mid
  else
    redis.call('PUBLISH', P..'node:'..node, client..' '..ARGV[3]..' '..from..' '..to..' '..ARGV[4])
  end
end
return reply
"#;

/// ARGV: member id, room, first and last rank of the page. Returns `{count, nicks}`, or
/// `{'gone'}` if the asking member is gone.
pub const WHO: &str = r#"
if redis.call('EXISTS', P..'member:'..ARGV[1]) == 0 then return {'gone'} end
local mk = P..'room:'..ARGV[2]..':members'
local nicks = {}
for i, m in ipairs(redis.call('ZRANGE', mk, ARGV[3], ARGV[4])) do
  nicks[i] = redis.call('HGET', P..'member:'..m, 'nick') or ''
end
return {redis.call('ZCARD', mk), nicks}
"#;

/// ARGV: first and last rank of the page. Returns `{count, names, member counts}`. The asker
/// need not be a member: the list is public (the HTTP API, which is no member, reads it too)
/// and reading it changes nothing, so a member Redis no longer knows is found out by its next
/// command that needs it.
pub const ROOMS: &str = r#"
local names = redis.call('ZRANGE', P..'rooms', ARGV[1], ARGV[2])
local counts = {}
for i, room in ipairs(names) do
  counts[i] = redis.call('ZCARD', P..'room:'..room..':members')
end
return {redis.call('ZCARD', P..'rooms'), names, counts}
"#;

/// ARGV: room names. Returns `{names, member counts}` for those of them that exist, in the
/// order given. Like ROOMS, it needs no member.
pub const SIZES: &str = r#"
local names, counts = {}, {}
for _, room in ipairs(ARGV) do
  if redis.call('ZSCORE', P..'rooms', room) then
    names[#names + 1] = room
    counts[#counts + 1] = redis.call('ZCARD', P..'room:'..room..':members')
  end
end
return {names, counts}
"#;

/// ARGV: room, presence limit (optional, 0 if absent). Returns `{epoch, last id, event,
/// history records, member count, first nicks}`; epoch `''` if there is no such room. For a
/// resync (the count and nicks tell the members of a room whose epoch changed), and for the
/// HTTP API's history.
pub const STATE: &str = r#"
if not exists(ARGV[1]) then return {'', 0, 0, {}, 0, {}} end
local rk = current(ARGV[1])
local mk = rk..':members'
local s = redis.call('HMGET', rk, 'epoch', 'seq', 'ev')
local nicks = {}
local limit = tonumber(ARGV[2] or '0')
if limit > 0 then
  for i, m in ipairs(redis.call('ZRANGE', mk, 0, limit - 1)) do
    nicks[i] = redis.call('HGET', P..'member:'..m, 'nick') or ''
  end
end
return {s[1] or '', tonumber(s[2] or '0'), tonumber(s[3] or '0'),
  redis.call('LRANGE', rk..':history', 0, -1), redis.call('ZCARD', mk), nicks}
"#;

/// ARGV: default room, then pairs of member id and leave reason. The members are gone: each
/// leaves its rooms, its nick is free. Returns how many there were.
pub const BYE: &str = r#"
local n = 0
for i = 2, #ARGV, 2 do
  bye(ARGV[i], ARGV[i + 1], ARGV[1])
  n = n + 1
end
return n
"#;

/// ARGV: node, `'1'` if Redis lost its data since the node last saw it, default room, epoch
/// prefix for rooms to create, then for each member: id, nick, address, `'1'` for a user's
/// connection (else `'0'`), number of rooms, the rooms. Makes Redis agree with the node about
/// its live members, silently: nick, rooms (a room Redis has the member in and the node does
/// not is left, announced), a user's connections registered and listed once per room as by
/// REGISTER and JOIN. A member Redis no longer knows while it kept its data was reaped, and
/// one whose nick someone else holds now (anyone but another connection of the same user)
/// cannot have it back: both are returned, as lost. Limits are not checked: these members
/// were let in.
pub const RESTORE: &str = r#"
local node, fresh, default, prefix = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
local lost = {}
local made = 0
local i = 5
while i <= #ARGV do
  local mid, nick, addr = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local user, n = ARGV[i + 3] == '1', tonumber(ARGV[i + 4])
  local rooms = {}
  for j = 1, n do rooms[ARGV[i + 4 + j]] = true end
  i = i + 5 + n
  local member = P..'member:'..mid
  local known = redis.call('EXISTS', member) == 1
  local lower = string.lower(nick)
  local nk = P..'nick:'..lower
  local uk = P..'user:'..lower
  local holder = redis.call('GET', nk)
  local shared = user and holder and holder ~= mid and redis.call('SISMEMBER', uk, holder) == 1
  if (not known and not fresh) or (holder and holder ~= mid and not shared) then
    lost[#lost + 1] = mid
  else
    local old = redis.call('HGET', member, 'nick')
    if old and redis.call('GET', P..'nick:'..string.lower(old)) == mid then
      redis.call('DEL', P..'nick:'..string.lower(old))
    end
    if not shared then redis.call('SET', nk, mid) end
    redis.call('HSET', member, 'nick', nick, 'addr', addr)
    if user then
      redis.call('HSET', member, 'user', '1')
      redis.call('SADD', uk, mid)
    end
    redis.call('SADD', P..'node:'..node..':members', mid)
    for _, room in ipairs(redis.call('SMEMBERS', member..':rooms')) do
      if not rooms[room] then part(room, mid, 'left', default) end
    end
    for room in pairs(rooms) do
      if redis.call('SISMEMBER', member..':rooms', room) == 0 then
        if not exists(room) then
          made = made + 1
          create(room, prefix..'-'..made)
        end
        if not accompany(room, mid) then add(room, mid, addr, default) end
      end
    end
  end
end
redis.call('SADD', P..'nodes', node)
return lost
"#;

/// ARGV: node, time to live in ms, a life id to use if Redis has none. Renews the node's
/// heartbeat and echoes `beat` on its channel. Returns `{1 if the heartbeat was still alive
/// else 0, the life id, rooms}`.
pub const HEARTBEAT: &str = r#"
local alive = P..'node:'..ARGV[1]..':alive'
local was = redis.call('EXISTS', alive)
redis.call('SET', alive, '1', 'PX', ARGV[2])
redis.call('SADD', P..'nodes', ARGV[1])
redis.call('SET', P..'life', ARGV[3], 'NX')
redis.call('PUBLISH', P..'node:'..ARGV[1], 'beat')
return {was, redis.call('GET', P..'life'), redis.call('ZCARD', P..'rooms')}
"#;

/// ARGV: Redis's `run_id` now, `'1'` if its persistence now keeps every acknowledged write
/// (AOF with `appendfsync always`), a new era id. Run once per connection, before anything
/// else reads the rooms. Redis's `run_id` changes at every restart; the one this data set was
/// last written under is kept in `run`. A data set written under another run came back from
/// a restart, and unless its persistence keeps every acknowledged write it may be older than
/// what the nodes and clients saw: ids it had handed out may be handed out again. So it
/// starts a new era, and every room starts a new epoch when it is next touched (`current`).
/// A flushed data set has no `run` (nor rooms): nothing to do. Returns 1 if a new era began.
pub const WITNESS: &str = r#"
local known = redis.call('GET', P..'run')
redis.call('SET', P..'run', ARGV[1])
if known and known ~= ARGV[1] and ARGV[2] ~= '1' then
  redis.call('SET', P..'era', ARGV[3])
  return 1
end
return 0
"#;

/// ARGV: this node, default room, batch size. Removes up to a batch of the members of other
/// nodes whose heartbeat expired, with leave reason `node_lost`. Returns how many it removed
/// (a full batch: call again).
pub const REAP: &str = r#"
local budget = tonumber(ARGV[3])
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
  if node ~= ARGV[1] and redis.call('EXISTS', P..'node:'..node..':alive') == 0 then
    local nk = P..'node:'..node..':members'
    for _, mid in ipairs(redis.call('SPOP', nk, budget - n)) do
      bye(mid, 'node_lost', ARGV[2])
      n = n + 1
    end
    if redis.call('EXISTS', nk) == 0 then redis.call('SREM', P..'nodes', node) end
    if n >= budget then return n end
  end
end
return n
"#;

/// ARGV: this node, default room, batch size. A clean exit: up to a batch of the node's members
/// leave with reason `shutdown`; with the last one the node's heartbeat goes. Returns how many
/// members remain (call again until 0).
pub const GOODBYE: &str = r#"
local nk = P..'node:'..ARGV[1]..':members'
for _, mid in ipairs(redis.call('SPOP', nk, tonumber(ARGV[3]))) do
  bye(mid, 'shutdown', ARGV[2])
end
local left = redis.call('SCARD', nk)
if left == 0 then
  redis.call('DEL', P..'node:'..ARGV[1]..':alive')
  redis.call('SREM', P..'nodes', ARGV[1])
end
return left
"#;

/// Every script with the prelude, hashed once (redis-rs sends `EVALSHA`, and the script
/// itself when Redis does not know it yet).
pub struct Scripts {
    pub register: redis::Script,
    pub nick: redis::Script,
    pub join: redis::Script,
    pub leave: redis::Script,
    pub say: redis::Script,
    pub publish: redis::Script,
    pub direct: redis::Script,
    pub who: redis::Script,
    pub rooms: redis::Script,
    pub sizes: redis::Script,
    pub state: redis::Script,
    pub bye: redis::Script,
    pub restore: redis::Script,
    pub heartbeat: redis::Script,
    pub witness: redis::Script,
    pub reap: redis::Script,
    pub goodbye: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        let s = |body: &str| redis::Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            register: s(REGISTER),
            nick: s(NICK),
            join: s(JOIN),
            leave: s(LEAVE),
            say: s(SAY),
            publish: s(PUBLISH),
            direct: s(DIRECT),
            who: s(WHO),
            rooms: s(ROOMS),
            sizes: s(SIZES),
            state: s(STATE),
            bye: s(BYE),
            restore: s(RESTORE),
            heartbeat: s(HEARTBEAT),
            witness: s(WITNESS),
            reap: s(REAP),
            goodbye: s(GOODBYE),
        }
    }
}
