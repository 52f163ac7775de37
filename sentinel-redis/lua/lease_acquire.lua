-- acquire_lease: ARGV[3] owner, ARGV[4] ttl µs, ARGV[5] hard ttl µs, ARGV[6] request id.
-- Mirrors sentinel_core::lease::transition for LeaseCommand::Acquire.
local now = clock(ARGV[1])
local owner, rid = ARGV[3], ARGV[6]
local f = load(KEYS[1])
local r = lease_record(f)
if r and alive(r, now) then
  if r.rid == rid then
    -- A retry of the call that was granted this lease: hand it back.
    field(r, 'hard')
    return {'acquired', r.token, r.lease, r.hard}
  end
  return {'held', r.owner, r.token, r.lease}
end
local ttl = arg_num(4, 'ttl')
local hard_ttl = arg_num(5, 'hard ttl')
local token = str(next_token(last_token(f), now))
local t = str(now)
local lease = str(plus(now, ttl))
local hard = str(plus(now, hard_ttl))
local seq = append(f, now, 'lease_acquired', token, owner, nil, nil)
redis.call('HSET', KEYS[1], 'owner', owner, 'token', token, 'rid', rid, 'lease', lease,
  'hard', hard, 'ttl', ARGV[4], 'hard_ttl', ARGV[5], 'acquired', t, 'last', token, 'seq', seq)
return {'acquired', token, lease, hard}
