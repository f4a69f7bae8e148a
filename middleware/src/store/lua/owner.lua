-- Single use per (iss, jti), whatever the payer (prepended to the scripts that spend a
-- receipt). A receipt's state key lives in its payer's hash slot, so a receipt re-signed for
-- another `sub` would find a fresh state key there; the owner key, in a slot named by the
-- receipt's own fingerprint, records the first payer that presented it.
-- ARGV[1] is always taken off here, before the script proper reads its own KEYS and ARGV:
-- '@owner' on one Redis server, where the claim is made in this script: KEYS[1] (taken off
-- too) is the owner key, ARGV[2] the payer, ARGV[3] keep-until (unix ms), also taken off;
-- '@none' when there is nothing to claim here (an x402 nonce, or a cluster, where the owner key
-- is in another slot: the caller claims it first with claim_owner.lua).
-- One command (Redis >= 7.0: SET NX GET): the previous owner, or nil when this payer is now it.
local function owner_claim(key, payer, keep_until)
  local cur = redis.call('SET', key, payer, 'NX', 'GET', 'PXAT', keep_until)
  if cur then
    return cur ~= payer
  end
  return false
end

-- True when another payer presented this (iss, jti) first: the script refuses the receipt.
local OWNED_BY_OTHER = false
if table.remove(ARGV, 1) == '@owner' then
  local okey = table.remove(KEYS, 1)
  local payer = table.remove(ARGV, 1)
  local keep_until = table.remove(ARGV, 1)
  OWNED_BY_OTHER = owner_claim(okey, payer, keep_until)
end
