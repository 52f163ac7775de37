-- start: ARGV[3] token. Mirrors ExecutionCommand::Start.
local now = clock(ARGV[1])
local token = arg_token(3)
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
if r.token ~= token then
  return rejected(r, 'fenced')
end
if r.state ~= 'claimed' and r.state ~= 'executing' then
  return rejected(r, 'wrong_state')
end
if not alive(r, now) then
  return rejected(r, 'expired')
end
if r.state == 'executing' then
  -- Already started by this token: a retried start.
  return {'started', r.lease}
end
local lease = str(renewed(r, now))
local seq = append(f, now, 'started', r.token, r.owner, 'executing', nil)
redis.call('HSET', KEYS[1], 'state', 'executing', 'lease', lease, 'updated', str(now), 'seq', seq,
  'c', compact('executing', r.fp, r.token, lease, seq, r.rid, nil, nil))
changed(seq)
return {'started', lease}
