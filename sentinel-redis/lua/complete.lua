-- complete: ARGV[3] token, ARGV[4] the result as canonical JSON text. Mirrors
-- ExecutionCommand::Complete. Results are compared as text: the store canonicalises every result
-- (sorted object keys) before sending it, so equal JSON values are equal texts. The common case
-- (the executing worker completes) was handled by lua/fast/complete.lua before this.
local now = clock(ARGV[1])
local token = arg_token(3)
local result = ARGV[4]
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
local reason
if r.token ~= token then
  reason = 'fenced'
elseif r.state == 'executing' then
  local seq = append(f, now, 'completed', r.token, r.owner, 'completed', nil)
  redis.call('HSET', KEYS[1], 'state', 'completed', 'updated', str(now), 'seq', seq,
    'c', compact('completed', r.fp, r.token, nil, nil, nil, nil, result))
  if f.result ~= nil then
    redis.call('HDEL', KEYS[1], 'result')
  end
  changed(seq)
  return {'completed'}
elseif r.state == 'completed' and result_of(r) == result then
  -- The same completion sent again (its reply was lost): already done, nothing to log.
  return {'completed'}
else
  reason = 'wrong_state'
end
-- The refusal is logged with the worker's result: an operator reconciling this key may need it.
local detail = '{"reason":"' .. reason .. '","result":' .. result .. '}'
local seq = append(f, now, 'completion_rejected', token, nil, r.state, detail)
if r.state == 'claimed' or r.state == 'executing' then
  redis.call('HSET', KEYS[1], 'seq', seq,
    'c', compact(r.state, r.fp, r.token, r.lease, seq, r.rid, nil, nil))
else
  redis.call('HSET', KEYS[1], 'seq', seq)
end
changed(seq)
return rejected(r, reason)
