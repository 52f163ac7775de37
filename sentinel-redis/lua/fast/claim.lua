-- claim, fast section (runs before lua/lib.lua is even defined, so it costs no more than the
-- Redis commands it sends). It answers the common cases from the compact field 'c' (see
-- lib.lua) with one HGET, and grants a key nobody ever claimed without reading more; anything
-- else falls through to the full claim below it (lua/claim.lua), which handles every case.
-- Arguments as in lua/claim.lua.
local MAX_EXACT = 9007199254740991 -- 2^53 - 1: integers below it are exact in a Lua number
local fast_now = ARGV[1]
if fast_now ~= '' and not string.find(fast_now, '^%d+$') then
  fast_now = nil -- the full section reports the bad argument
end
local function fast_clock()
  if fast_now == '' then
    local t = redis.call('TIME')
    fast_now = string.format('%d%06d', t[1], t[2])
  end
  return fast_now
end

local c = redis.call('HGET', KEYS[1], 'c')
if c and fast_now then
  local head = ARGV[8] .. '\0'
  local n = #head
  if string.sub(c, 1, n) == head then
    local kind = string.sub(c, n + 1, n + 1)
    if kind == 'C' or kind == 'R' then
      -- Completed (the cached result) or reconciling: 'c' is the reply.
      return c
    end
    local lease, token, seq, rid8 = string.match(c, '^(%d+)%z(%d+)%z(%d+)%z(.*)$', n + 2)
    -- A request id that may be ours is a possible retry of our own claim: the full section.
    if lease and (kind == 'L' or kind == 'E') and rid8 ~= string.sub(ARGV[7], 1, #rid8) then
      local now = fast_clock()
      if #now < #lease or (#now == #lease and now < lease) then
        local state = 'claimed'
        if kind == 'E' then
          state = 'executing'
        end
        return {'busy', state, redis.call('HGET', KEYS[1], 'owner'), token, lease, seq}
      elseif kind == 'E' then
        return {'uncertain', redis.call('HGET', KEYS[1], 'owner'), token, lease}
      end
      -- Claimed and expired: granted anew by the full section.
    end
  end
elseif not c and fast_now and redis.call('EXISTS', KEYS[1]) == 0 then
  -- Nothing under this name, not even a tombstone: the first claim of the key. The token and
  -- the event id are max(1, now); exact in Lua numbers while below 2^53 (until the year 2255),
  -- otherwise the full section computes them in two limbs.
  local now = fast_clock()
  local ttl, hard_ttl = ARGV[4], ARGV[5]
  local t = tonumber(now)
  if #now <= 16 and t >= 1 and t < MAX_EXACT and string.find(ttl, '^%d+$') and #ttl <= 16
    and string.find(hard_ttl, '^%d+$') and #hard_ttl <= 16
    and t + tonumber(hard_ttl) < MAX_EXACT and t + tonumber(ttl) < MAX_EXACT then
    local lease = string.format('%d', t + tonumber(ttl))
    local hard = string.format('%d', t + tonumber(hard_ttl))
    local owner, rid, fp = ARGV[3], ARGV[7], ARGV[8]
    local state, kind = 'claimed', 'L'
    if ARGV[6] == '1' then
      state, kind = 'executing', 'E'
    end
    -- The event first: if the history refuses it, nothing has been written, and the full
    -- section (whose XADD meets the same refusal) says why.
    local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[2], now .. '-0', 'kind', 'claimed',
      'token', now, 'at', now, 'owner', owner, 'state', state)
    if not (type(added) == 'table' and added.err) then
      local cfield = fp .. '\0' .. kind .. lease .. '\0' .. now .. '\0' .. now .. '\0'
        .. string.sub(rid, 1, 8)
      if fp == '' then
        redis.call('HSET', KEYS[1], 'state', state, 'owner', owner, 'token', now, 'rid', rid,
          'lease', lease, 'hard', hard, 'ttl', ttl, 'hard_ttl', hard_ttl, 'created', now,
          'updated', now, 'last', now, 'seq', now, 'c', cfield)
      else
        redis.call('HSET', KEYS[1], 'state', state, 'owner', owner, 'token', now, 'rid', rid,
          'lease', lease, 'hard', hard, 'ttl', ttl, 'hard_ttl', hard_ttl, 'created', now,
          'updated', now, 'last', now, 'seq', now, 'c', cfield, 'fp', fp)
      end
      redis.pcall('SPUBLISH', KEYS[1], now)
      return {'acquired', now, lease, hard}
    end
  end
end
