-- abort: ARGV[3] token, ARGV[4] 'not_applied' or 'uncertain'. Mirrors ExecutionCommand::Abort.
local now = clock(ARGV[1])
local token = arg_token(3)
local disposition = ARGV[4]
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
if r.token ~= token then
  return rejected(r, 'fenced')
end
local target
if disposition == 'not_applied' then
  if r.state ~= 'claimed' and r.state ~= 'executing' then
    return rejected(r, 'wrong_state')
  end
  target = 'claimed'
elseif disposition == 'uncertain' then
  if r.state ~= 'executing' then
    return rejected(r, 'wrong_state')
  end
  target = 'executing'
else
  error({err = 'SENTINEL_ARG unknown disposition'})
end
local live = alive(r, now)
if r.state == target and not live then
  -- Already given up this way (a retried abort, or the lease ran out): nothing to change.
  return {'aborted'}
end
local lease = r.lease
if live then
  lease = str(now)
end
local detail = '{"disposition":"' .. disposition .. '"}'
local seq = append(f, now, 'aborted', r.token, r.owner, target, detail)
redis.call('HSET', KEYS[1], 'state', target, 'lease', lease, 'updated', str(now), 'seq', seq,
  'c', compact(target, r.fp, r.token, lease, seq, r.rid, nil, nil))
changed(seq)
return {'aborted'}
