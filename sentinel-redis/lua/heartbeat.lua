-- heartbeat: renews many held executions and leases in one call.
-- KEYS[i] is the record hash of renewal i (no history streams: renewals are not logged);
-- ARGV[1] the time, ARGV[2] unused, then per renewal ARGV[1 + 2i] 'e' (execution) or 'l' (lease)
-- and ARGV[2 + 2i] the token. Replies one entry per renewal, in order: {'renewed', lease} or a
-- rejection. Mirrors ExecutionCommand::Heartbeat and LeaseCommand::Renew.
-- On Redis Cluster the store sends one call per hash slot, so every key here is in one slot.
local now = clock(ARGV[1])
-- Every record is read and judged before the first write: a record that cannot be decoded fails
-- the whole call with nothing renewed, never after renewing the ones before it.
local out, writes = {}, {}
for i = 1, #KEYS do
  local kind = ARGV[1 + 2 * i]
  local token = arg_token(2 + 2 * i)
  local f = load(KEYS[i])
  local r
  if kind == 'e' then
    r = execution(f)
  else
    r = lease_record(f)
  end
  if not r then
    out[i] = not_found()
  elseif r.token ~= token then
    out[i] = rejected(r, 'fenced')
  elseif kind == 'e' and r.state ~= 'claimed' and r.state ~= 'executing' then
    out[i] = rejected(r, 'wrong_state')
  elseif not alive(r, now) then
    out[i] = rejected(r, 'expired')
  else
    local lease = str(renewed(r, now))
    if lease ~= r.lease then
      if kind == 'e' then
        writes[#writes + 1] = {KEYS[i], 'lease', lease,
          'c', compact(r.state, r.fp, r.token, lease, r.seq, r.rid, nil, nil)}
      else
        writes[#writes + 1] = {KEYS[i], 'lease', lease}
      end
    end
    out[i] = {'renewed', lease}
  end
end
for _, w in ipairs(writes) do
  redis.call('HSET', unpack(w))
end
return out
