-- a policy that spends its load budget: must be stopped, not hang
local t = {}
for i = 1, 1e9 do t[i % 7] = string.rep("x", i % 100) end
return { default = "deny" }
