-- complete, fast section (before lua/lib.lua, see lua/fast/claim.lua): the executing worker
-- completes with the current token, the common case, from the compact field 'c' and the owner
-- (two HGETs). Anything else (another token, another state, a repeated completion, numbers past
-- 2^53) falls through to the full completion below it (lua/complete.lua).
local MAX_EXACT = 9007199254740991 -- 2^53 - 1
local c = redis.call('HGET', KEYS[1], 'c')
local z = c and string.find(c, '\0', 1, true)
local lease, token, seq
if z and string.sub(c, z + 1, z + 1) == 'E' then
  lease, token, seq = string.match(c, '^(%d+)%z(%d+)%z(%d+)%z', z + 2)
end
if token == ARGV[3] and (ARGV[1] == '' or string.find(ARGV[1], '^%d+$')) then
  local now = ARGV[1]
  if now == '' then
    local t = redis.call('TIME')
    now = string.format('%d%06d', t[1], t[2])
  end
  local t, s = tonumber(now), tonumber(seq)
  if #now <= 16 and #seq <= 16 and t < MAX_EXACT and s < MAX_EXACT then
    local owner = redis.call('HGET', KEYS[1], 'owner')
    if owner then
      -- The event id: max(seq + 1, now), as lib.lua's append.
      local id = now
      if s + 1 > t then
        id = string.format('%d', s + 1)
      end
      -- If the history refuses the event, nothing has been written, and the full section
      -- (whose XADD meets the same refusal) says why.
      local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 'kind', 'completed',
        'token', token, 'at', now, 'owner', owner, 'state', 'completed')
      if not (type(added) == 'table' and added.err) then
        redis.call('HSET', KEYS[1], 'state', 'completed', 'updated', now, 'seq', id,
          'c', string.sub(c, 1, z) .. 'C' .. token .. '\0' .. ARGV[4])
        redis.pcall('SPUBLISH', KEYS[1], id)
        return {'completed'}
      end
    end
  end
end
