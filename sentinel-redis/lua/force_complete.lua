-- force_complete: ARGV[3] the operator, ARGV[4] the result as canonical JSON text.
-- Mirrors ExecutionCommand::ForceComplete.
local now = clock(ARGV[1])
local owner = ARGV[3]
local result = ARGV[4]
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
if r.state == 'reconciling' then
  local seq = append(f, now, 'force_completed', r.token, owner, 'completed', nil)
  redis.call('HSET', KEYS[1], 'state', 'completed', 'owner', owner, 'updated', str(now),
    'seq', seq, 'c', compact('completed', r.fp, r.token, nil, nil, nil, nil, result))
  if f.result ~= nil then
    redis.call('HDEL', KEYS[1], 'result')
  end
  changed(seq)
  return {'force_completed'}
end
if r.state == 'completed' and result_of(r) == result then
  return {'force_completed'}
end
return rejected(r, 'wrong_state')
