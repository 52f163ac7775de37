-- reconcile: ARGV[3] the operator. Mirrors ExecutionCommand::Reconcile: a new token fences out the
-- worker of an uncertain execution.
local now = clock(ARGV[1])
local owner = ARGV[3]
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
if r.state ~= 'executing' then
  return rejected(r, 'wrong_state')
end
if alive(r, now) then
  return rejected(r, 'still_alive')
end
local token = str(next_token(last_token(f), now))
local seq = append(f, now, 'reconciling', token, owner, 'reconciling', nil)
redis.call('HSET', KEYS[1], 'state', 'reconciling', 'owner', owner, 'token', token,
  'updated', str(now), 'last', token, 'seq', seq,
  'c', compact('reconciling', r.fp, token, nil, nil, nil, owner, nil))
redis.call('HDEL', KEYS[1], 'rid')
changed(seq)
return {'reconciling', token}
