-- Shared helpers, prepended to every Sentinel script (see src/scripts.rs).
--
-- Conventions of every script:
--   KEYS[1]  the record hash, KEYS[2] its history stream (both carry the same {tag}: one slot);
--   ARGV[1]  the time in microseconds since the epoch, or '' to read the server's TIME;
--   ARGV[2]  the most events a history stream keeps (XADD MAXLEN);
--   ARGV[3.. the command's arguments.
--
-- Numbers (timestamps in microseconds, tokens, event ids) are kept exact. They travel and are
-- stored as canonical decimal strings (no sign, no leading zeros), so equality is string
-- equality. Where a script must order or add them it parses them into two limbs {high, low} in
-- base 1e9, because Lua numbers are doubles and timestamps can exceed 2^53; it prints them back
-- with '%d', never with tostring (which rounds to 14 digits).
--
-- A script reads and checks everything it needs before it writes. Its first write is the XADD of
-- its event, done with pcall: if that fails nothing has been written and the script returns the
-- error (see `append`). Redis refuses writes to a script only at its first write (READONLY on a
-- replica, NOREPLICAS, OOM, MISCONF), so that is the only place a refusal can come. Redis never
-- runs half a script for anyone else, and AOF and replicas receive a script's writes as one
-- MULTI/EXEC.

local BASE = 1000000000
local ONE = {0, 1}
-- Timestamp::MAX, 9999-12-31T23:59:59.999999Z: timestamps saturate here.
local MAX_TIME = {253402300, 799999999}

-- Parses a canonical non-negative decimal string of at most 19 digits; nil for anything else.
local function num(s)
  if type(s) ~= 'string' or not string.find(s, '^%d+$') then
    return nil
  end
  local n = #s
  if n <= 9 then
    return {0, tonumber(s)}
  elseif n <= 19 then
    return {tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))}
  end
  return nil
end

local function str(a)
  if a[1] == 0 then
    return string.format('%d', a[2])
  end
  return string.format('%d%09d', a[1], a[2])
end

local function lt(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local function add(a, b)
  local lo, hi = a[2] + b[2], a[1] + b[1]
  if lo >= BASE then
    return {hi + 1, lo - BASE}
  end
  return {hi, lo}
end

local function max(a, b)
  if lt(a, b) then
    return b
  end
  return a
end

local function min(a, b)
  if lt(a, b) then
    return a
  end
  return b
end

-- Timestamp::saturating_add.
local function plus(t, d)
  return min(add(t, d), MAX_TIME)
end

-- FencingToken::next: max(last + 1, now in microseconds).
local function next_token(last, now)
  if last then
    return max(add(last, ONE), now)
  end
  return max(ONE, now)
end

-- An error reply for a record the script cannot read; the store maps it to CorruptRecord.
local function corrupt(what)
  error({err = 'SENTINEL_CORRUPT ' .. what})
end

local function clock(arg)
  if arg ~= '' then
    local n = num(arg)
    if not n then
      error({err = 'SENTINEL_ARG the time must be microseconds since the epoch'})
    end
    return n
  end
  local t = redis.call('TIME')
  local sec = tonumber(t[1])
  -- sec * 1e6 + usec, split without rounding: 1e9 = 1000 * 1e6.
  return {math.floor(sec / 1000), (sec % 1000) * 1000000 + tonumber(t[2])}
end

local function arg_num(i, what)
  local n = num(ARGV[i])
  if not n then
    error({err = 'SENTINEL_ARG ' .. what .. ' must be a non-negative integer'})
  end
  return n
end

-- The record hash as a table of its fields (all strings).
local function load(key)
  local raw = redis.call('HGETALL', key)
  local f = {}
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  return f
end

-- A numeric field, parsed; a missing or malformed one is a corrupt record.
local function field(f, name)
  local n = num(f[name])
  if not n then
    corrupt('field ' .. name .. ' is missing or not a number')
  end
  return n
end

local STATES = {claimed = true, executing = true, completed = true, reconciling = true}

-- The execution record in hash fields f (checked, fields left as strings), or nil when there is
-- none (never claimed, or purged: only the tombstone fields 'last' and 'seq' remain).
local function execution(f)
  if f.token == nil then
    return nil
  end
  if not STATES[f.state] or f.owner == nil then
    corrupt('unknown state or missing owner')
  end
  return f
end

-- The lease record in hash fields f, or nil when the lease is free.
local function lease_record(f)
  if f.token == nil then
    return nil
  end
  if f.owner == nil or f.rid == nil then
    corrupt('field owner or rid is missing')
  end
  return f
end

-- The highest token ever issued for the slot: its tombstone, or the record's own token.
local function last_token(f)
  local last = nil
  if f.last ~= nil then
    last = field(f, 'last')
  end
  if f.token ~= nil then
    local token = field(f, 'token')
    if last == nil or lt(last, token) then
      return token
    end
  end
  return last
end

-- True while the record's lease holds at now.
local function alive(f, now)
  return lt(now, field(f, 'lease'))
end

-- step::renewed_expiry: min(now + ttl, hard), never earlier than the current expiry.
local function renewed(f, now)
  return max(min(plus(now, field(f, 'ttl')), field(f, 'hard')), field(f, 'lease'))
end

-- Appends one event to the history stream and returns its id (a string), which the caller stores
-- in the record's 'seq' field. Ids increase along a record's history and stay at or above the
-- store's clock, so they keep increasing even if recent writes were lost.
-- The XADD is the script's first write; on failure the script stops before writing anything.
local function append(f, now, kind, token, owner, state, detail)
  local seq = {0, 0}
  if f.seq ~= nil then
    seq = field(f, 'seq')
  end
  local id = str(max(add(seq, ONE), now))
  local cmd = {'XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 'kind', kind, 'token', token,
    'at', str(now)}
  if owner then
    cmd[#cmd + 1] = 'owner'
    cmd[#cmd + 1] = owner
  end
  if state then
    cmd[#cmd + 1] = 'state'
    cmd[#cmd + 1] = state
  end
  if detail then
    cmd[#cmd + 1] = 'detail'
    cmd[#cmd + 1] = detail
  end
  local reply = redis.pcall(unpack(cmd))
  if type(reply) == 'table' and reply.err then
    -- A foreign key at the stream's name, or a stream whose ids run ahead of the record's: data
    -- the store cannot trust. Anything else is the server refusing writes for now (a replica's
    -- READONLY, NOREPLICAS, OOM, MISCONF), passed on as it came, for the client to classify.
    if string.find(reply.err, '^WRONGTYPE') or string.find(reply.err, 'XADD', 1, true) then
      error({err = 'SENTINEL_CORRUPT the history stream refused the event: ' .. reply.err})
    end
    error(reply)
  end
  return id
end

-- Tells waiters that the record changed (RedisStore::wait_for_change): every script that appends
-- an execution event publishes its id, in the same script, on the record hash's own name. That
-- name carries the record's hash tag, so SPUBLISH keeps the message in the record's shard on a
-- cluster (plain PUBLISH would be broadcast to every node over the cluster bus); on a standalone
-- server SPUBLISH works the same (Redis 7). Best effort: a failed publish never fails the
-- transition, and a waiter re-checks at least every second anyway.
local function changed(seq)
  redis.pcall('SPUBLISH', KEYS[1], seq)
end

-- The compact field 'c' of an execution record: what the hot paths (lua/fast/) read with one HGET
-- instead of the whole hash, and what a cached claim returns as it is. Every script that changes
-- something it holds writes it again:
--   <fp> NUL 'C' <token> NUL <result>                          completed (the result is kept here)
--   <fp> NUL 'R' <token> NUL <owner>                           reconciling
--   <fp> NUL 'L'|'E' <lease> NUL <token> NUL <seq> NUL <rid8>  claimed | executing
-- <fp> is the fingerprint ('' for none; fingerprints, owners and request ids never hold U+0000,
-- results are JSON text), <rid8> the first 8 characters of the request id. With usual values it
-- stays under 64 bytes, so the hash keeps Redis's compact listpack encoding.
local function compact(state, fp, token, lease, seq, rid, owner, result)
  local head = (fp or '') .. '\0'
  if state == 'completed' then
    return head .. 'C' .. token .. '\0' .. result
  elseif state == 'reconciling' then
    return head .. 'R' .. token .. '\0' .. owner
  end
  local kind = 'L'
  if state == 'executing' then
    kind = 'E'
  end
  return head .. kind .. (lease or '') .. '\0' .. token .. '\0' .. (seq or '') .. '\0'
    .. string.sub(rid or '', 1, 8)
end

-- The result of a completed record: in 'c' (or in the field 'result' of a record written before
-- 'c' existed); nil if there is none.
local function result_of(f)
  if f.result ~= nil then
    return f.result
  end
  local c = f.c
  if c == nil then
    return nil
  end
  local z = string.find(c, '\0', 1, true)
  if z and string.sub(c, z + 1, z + 1) == 'C' then
    local z2 = string.find(c, '\0', z + 2, true)
    if z2 then
      return string.sub(c, z2 + 1)
    end
  end
  return nil
end

-- A refusal: {'rejected', reason, state or '', token or '', has fingerprint, fingerprint}.
local function reject(reason, state, token, fp)
  if fp then
    return {'rejected', reason, state or '', token or '', '1', fp}
  end
  return {'rejected', reason, state or '', token or '', '0', ''}
end

local function not_found()
  return reject('not_found', nil, nil, nil)
end

local function rejected(r, reason)
  return reject(reason, r.state, r.token, nil)
end

-- A token argument: canonical decimal, compared with the stored token as a string.
local function arg_token(i)
  if not num(ARGV[i]) then
    error({err = 'SENTINEL_ARG token must be a non-negative integer'})
  end
  return ARGV[i]
end
