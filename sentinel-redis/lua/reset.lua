-- reset_to_claimed: ARGV[3] the operator. Mirrors ExecutionCommand::ResetToClaimed.
local now = clock(ARGV[1])
local owner = ARGV[3]
local f = load(KEYS[1])
local r = execution(f)
if not r then
  return not_found()
end
if r.state ~= 'reconciling' then
  return rejected(r, 'wrong_state')
end
local lease = r.lease
if alive(r, now) then
  lease = str(now)
end
local seq = append(f, now, 'reset', r.token, owner, 'claimed', nil)
redis.call('HSET', KEYS[1], 'state', 'claimed', 'owner', owner, 'lease', lease,
  'updated', str(now), 'seq', seq,
  'c', compact('claimed', r.fp, r.token, lease, seq, r.rid, nil, nil))
changed(seq)
return {'reset'}
