-- Argo CD health check for AgentProject and McpGrant (awooop.dev), from the Ready condition.
-- Install it as resource.customizations.health.awooop.dev_AgentProject and
-- resource.customizations.health.awooop.dev_McpGrant in argocd-cm (docs/kubernetes.md).
-- scripts/chart-test.sh runs it over sample objects with Lua 5.1 (Argo CD's gopher-lua dialect).
local hs = {}
if obj.status ~= nil then
  -- A status that describes an older generation says nothing about this one yet.
  if obj.status.observedGeneration ~= nil and obj.metadata ~= nil and obj.metadata.generation ~= nil
      and obj.status.observedGeneration < obj.metadata.generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
    return hs
  end
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Ready" then
        if c.status == "True" then
          hs.status = "Healthy"
        elseif c.status == "False" then
          hs.status = "Degraded"
        else
          hs.status = "Progressing"
        end
        hs.message = (c.reason or "") .. ": " .. (c.message or "")
        return hs
      end
    end
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the operator to report the Ready condition"
return hs
